//! The one error type of the bench library.

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC call failed: {0}")]
    Status(#[from] tonic::Status),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("plot: {0}")]
    Plot(String),
    #[error("{0}")]
    Setup(String),
}

pub type Result<T> = std::result::Result<T, BenchError>;

/// Wraps an I/O error with what was being done.
pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Io { context, source }
}
