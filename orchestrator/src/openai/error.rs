//! Errors as OpenAI clients parse them: `{"error": {"message", "type",
//! "param", "code"}}` with the HTTP status their retry logic keys on (the
//! SDKs retry 429 and 5xx, and raise typed exceptions by status).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tonic::{Code, Status};

/// One refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// The request field at fault, when one is.
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            param: None,
            code: None,
        }
    }

    /// 400: the request is malformed or asks for something unsupported.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 413: the body, file or audio is past a limit.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
        .with_code("request_too_large")
    }

    /// 401: no token, or not the one configured (OpenAI answers a wrong API
    /// key with 401 too, and clients treat it as "fix your key").
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 403: a browser page of another origin.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "permission_error", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "this route does not take that method",
        )
    }

    pub fn with_param(mut self, param: &'static str) -> ApiError {
        self.param = Some(param);
        self
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// The HTTP form of a turn's gRPC status (the same statuses `Speak` and
    /// `Transcribe` return): bad input 4xx, no capacity 429, nothing
    /// serving 503, a worker that failed 502.
    pub fn from_status(status: &Status) -> ApiError {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument | Code::FailedPrecondition => ApiError::invalid(message),
            Code::OutOfRange => ApiError::too_large(message),
            Code::NotFound => ApiError::not_found(message).with_code("model_not_found"),
            Code::Unauthenticated => ApiError::unauthorized(message),
            Code::PermissionDenied => ApiError::forbidden(message),
            Code::ResourceExhausted => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
                    .with_code("no_capacity")
            }
            Code::Unavailable => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
                    .with_code("unavailable")
            }
            Code::DeadlineExceeded => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "server_error", message)
                    .with_code("timeout")
            }
            Code::Internal | Code::Unknown | Code::DataLoss => {
                ApiError::new(StatusCode::BAD_GATEWAY, "server_error", message)
                    .with_code("worker_error")
            }
            _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, message = %self.message, "OpenAI API request failed");
        } else {
            tracing::debug!(status = %self.status, message = %self.message, "OpenAI API request refused");
        }
        (self.status, Json(self.body())).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_http_codes_clients_retry_on() {
        let cases = [
            (Status::invalid_argument("x"), 400),
            (Status::out_of_range("x"), 413),
            (Status::not_found("x"), 404),
            (Status::unauthenticated("x"), 401),
            (Status::resource_exhausted("x"), 429),
            (Status::unavailable("x"), 503),
            (Status::deadline_exceeded("x"), 504),
            (Status::internal("x"), 502),
        ];
        for (status, http) in cases {
            assert_eq!(
                ApiError::from_status(&status).status.as_u16(),
                http,
                "{status:?}"
            );
        }
    }

    #[test]
    fn the_body_has_the_openai_shape() {
        let body = ApiError::invalid("no input").with_param("input").body();
        assert_eq!(body["error"]["message"], "no input");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "input");
        assert!(body["error"]["code"].is_null());
    }
}
