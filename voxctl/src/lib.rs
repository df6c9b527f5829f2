//! The client side of voxctl: speaking, transcribing and health checks over
//! gRPC, to the orchestrator or straight to one worker. Every frame and event
//! received is checked by the proto crate's validators, so voxctl doubles as a
//! quick protocol check.
#![forbid(unsafe_code)]

pub mod health;
pub mod speak;
pub mod transcribe;
pub mod wav;

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
/// certificate for mutual TLS) and the bearer token the orchestrator asks
/// for. The default is plaintext without a token.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    pub tls: Option<ClientTls>,
    pub token: Option<Secret>,
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
        .connect_timeout(std::time::Duration::from_secs(5));
    let uri = endpoint.uri().to_string();
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Connect(format!("{uri}: {}", error_chain(&e))))?;
    Ok(InterceptedService::new(
        channel,
        BearerToken::new(options.token.clone()),
    ))
}

/// A transport error with its causes: a TLS failure is only named in them.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
}
