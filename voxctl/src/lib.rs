//! The client side of voxctl: speaking, transcribing and health checks over
//! gRPC, to the orchestrator or straight to one worker. Every frame and event
//! received is checked by the proto crate's validators, so voxctl doubles as a
//! quick protocol check. And [`certs`]: the development PKI and token of
//! `voxctl certs`.
#![forbid(unsafe_code)]

pub mod certs;
pub mod health;
pub mod speak;
pub mod transcribe;
pub mod wav;

use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use voxwire_service::credentials::{BearerToken, Secret};
use voxwire_service::tls::ClientTls;

/// A session id unique enough for one command run.
pub fn fresh_session_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// How to reach a server: TLS (with the CA to trust, and a client
/// certificate for mutual TLS), the bearer token the orchestrator asks
/// for, and how long to wait. The default is plaintext without a token,
/// [`DEFAULT_CONNECT_TIMEOUT`] and [`DEFAULT_CALL_TIMEOUT`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub tls: Option<ClientTls>,
    pub token: Option<Secret>,
    /// Longest wait for a connection (TCP, TLS and HTTP/2 handshakes).
    pub connect_timeout: Duration,
    /// Longest wait for an answer: a unary response, a stream's response
    /// headers, the next frame of a Speak.
    pub call_timeout: Duration,
}

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            tls: None,
            token: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }
}

/// `future` bounded by `limit`: past it, [`ClientError::Timeout`] saying
/// what did not come and which flag sets the bound.
pub async fn within<T, F>(
    limit: Duration,
    what: &str,
    flag: &str,
    future: F,
) -> Result<T, ClientError>
where
    F: std::future::Future<Output = Result<T, ClientError>>,
{
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Timeout(format!(
                "{what} within {} ms ({flag})",
                limit.as_millis()
            )))
        })
}

/// A connection that sends the options' token with every call.
pub type Conn = InterceptedService<Channel, BearerToken>;

/// Connects to `HOST:PORT` (or a URI) in plaintext, without a token.
pub async fn connect(target: &str) -> Result<Conn, ClientError> {
    connect_with(target, &ClientOptions::default()).await
}

/// Connects to `HOST:PORT` (or a URI) with `options`.
pub async fn connect_with(target: &str, options: &ClientOptions) -> Result<Conn, ClientError> {
    let endpoint = voxwire_service::tls::endpoint(target, options.tls.as_ref())
        .map_err(|e| ClientError::Target(format!("{target}: {e}")))?
        .connect_timeout(options.connect_timeout);
    let uri = endpoint.uri().to_string();
    let connecting = async {
        endpoint.connect().await.map_err(|e| {
            ClientError::Connect(format!("{uri}: {}", voxwire_service::error_chain(&e)))
        })
    };
    let channel = within(
        options.connect_timeout,
        &format!("{uri}: no connection"),
        "--connect-timeout-ms",
        connecting,
    )
    .await?;
    Ok(InterceptedService::new(
        channel,
        BearerToken::new(options.token.clone()),
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad target {0}")]
    Target(String),
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("{0}")]
    Status(#[from] tonic::Status),
    #[error("the server broke the protocol: {0}")]
    Protocol(#[from] voxwire_proto::Violation),
    #[error("audio file: {0}")]
    Wav(String),
    #[error("{0}")]
    Timeout(String),
}
