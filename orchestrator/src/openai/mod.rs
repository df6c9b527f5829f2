//! The OpenAI-compatible audio API on the HTTP side port, under `/v1`, for
//! the clients that already speak it (the `openai` SDKs, LiveKit Agents' and
//! Pipecat's OpenAI plugins, Open WebUI) with `base_url=http://HOST:PORT/v1`:
//!
//! - `GET /v1/models`, `GET /v1/models/{id}` ([`models`]);
//! - `POST /v1/audio/speech` ([`speech`]): one `Speak` turn, streamed as WAV
//!   or raw PCM as the frames arrive;
//! - `POST /v1/audio/transcriptions` ([`transcriptions`]): a WAV upload run
//!   through the `Transcribe` relay.
//!
//! Model names (`tts-1`, `whisper-1`, ...) and OpenAI's voice names
//! (`alloy`, ...) select the pools' defaults. Every refusal is an OpenAI
//! error body ([`error::ApiError`]). The routes pass the same checks as the
//! console's WebSocket: the Origin rule, the bearer token when one is set,
//! and `--max-sessions-per-client` (counted per HTTP client address).

pub mod error;
pub mod models;
pub mod speech;
pub mod transcriptions;
pub mod wav;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body::Frame;

use crate::app::Orchestrator;
use crate::auth::{check_origin, Admitted, Gate};
use crate::config::Settings;
use crate::trace::TraceContext;
use error::ApiError;

/// The `/v1` routes, guarded (see the module documentation).
pub fn routes(settings: &Settings) -> Router<Arc<Orchestrator>> {
    let guard = Guard {
        gate: Gate::from_settings(&settings.security),
        allowed_origins: settings.security.console_origins.clone(),
    };
    let not_allowed = || async { ApiError::method_not_allowed() };
    let v1 = Router::new()
        .route("/models", get(models::list).fallback(not_allowed))
        .route("/models/{id}", get(models::retrieve).fallback(not_allowed))
        .route(
            "/audio/speech",
            post(speech::create)
                .fallback(not_allowed)
                // The text limit (--max-text-chars) is checked on the text;
                // this bounds the JSON around it like a gRPC message.
                .layer(DefaultBodyLimit::max(settings.security.max_message_bytes)),
        )
        .route(
            "/audio/transcriptions",
            post(transcriptions::create)
                .fallback(not_allowed)
                .layer(DefaultBodyLimit::max(settings.openai.max_upload_bytes)),
        )
        .fallback(|| async {
            ApiError::not_found("no such route under /v1").with_code("unknown_url")
        })
        .layer(axum::middleware::from_fn_with_state(guard, guard_v1));
    Router::new().nest("/v1", v1)
}

/// The trace a request continues: its `traceparent` header when well formed.
pub(crate) fn trace_of(headers: &axum::http::HeaderMap) -> TraceContext {
    TraceContext::from_metadata(&tonic::metadata::MetadataMap::from_headers(headers.clone()))
}

#[derive(Debug, Clone)]
struct Guard {
    gate: Arc<Gate>,
    allowed_origins: Vec<String>,
}

async fn guard_v1(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    let authority = request.uri().authority().map(|a| a.as_str().to_string());
    if let Err(reason) = check_origin(
        request.headers(),
        authority.as_deref(),
        &guard.allowed_origins,
        guard.gate.requires_token(),
    ) {
        tracing::warn!(%reason, "OpenAI API request refused: origin");
        return ApiError::forbidden(reason).into_response();
    }
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(axum::http::HeaderValue::as_bytes);
    if let Err(refusal) = guard.gate.check_authorization(authorization) {
        tracing::warn!(
            ?refusal,
            path = request.uri().path(),
            "OpenAI API request refused"
        );
        return ApiError::unauthorized(refusal.status().message()).into_response();
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let admitted = match guard.gate.admit(peer) {
        Ok(admitted) => admitted,
        Err(status) => return ApiError::from_status(&status).into_response(),
    };
    // A streamed reply counts against its client until its body ends.
    next.run(request).await.map(|body| {
        Body::new(HeldBody {
            body,
            _admitted: admitted,
        })
    })
}

/// A response body that keeps its request counted until it ends or is dropped.
struct HeldBody {
    body: Body,
    _admitted: Admitted,
}

impl http_body::Body for HeldBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
