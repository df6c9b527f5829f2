//! The client side of voxctl: speaking, transcribing and health checks over
//! gRPC, to the orchestrator or straight to one worker. Every frame and event
//! received is checked by the proto crate's validators, so voxctl doubles as a
//! quick protocol check.
#![forbid(unsafe_code)]

pub mod health;
pub mod speak;
pub mod transcribe;
pub mod wav;

/// A session id unique enough for one command run.
pub fn fresh_session_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Connects to `HOST:PORT` (or a full `http://` URI).
pub async fn connect(target: &str) -> Result<tonic::transport::Channel, ClientError> {
    let uri = if target.contains("://") {
        target.to_string()
    } else {
        format!("http://{target}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(uri.clone())
        .map_err(|e| ClientError::Target(format!("{target}: {e}")))?
        .connect_timeout(std::time::Duration::from_secs(5));
    endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Connect(format!("{uri}: {e}")))
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
