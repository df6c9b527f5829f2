//! The reliability harness: the real `orchestrator`, `tts-worker` and
//! `stt-worker` binaries started as processes on loopback (or inside a
//! network namespace), faults injected from outside (signals, cut links,
//! misbehaving fake workers), and what a client sees checked against a bound.
//!
//! - [`bins`]: finds the binaries in the target directory, building them once;
//! - [`process`]: a child process with its log, signals and resident memory;
//! - [`stack`]: the three services started with the flags the matrix uses,
//!   the orchestrator's side port read (`/api/workers`, `/metrics`);
//! - [`client`]: client sessions through the orchestrator, every frame
//!   validated and compared with the tone engine's reference audio;
//! - [`fake`]: fake TTS workers with one fault each, and a garbage server;
//! - [`netns`]: a network namespace joined by a veth pair whose link the
//!   test cuts and restores;
//! - [`soak`]: the load and soak runner shared by `voxsoak` and the tests.
#![forbid(unsafe_code)]

pub mod bins;
pub mod client;
pub mod fake;
pub mod http;
pub mod netns;
pub mod process;
pub mod soak;
pub mod stack;

use std::future::Future;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("building the binaries failed: {0}")]
    Build(String),
    #[error("HTTP {0}")]
    Http(String),
    #[error("timed out after {1:?} waiting for {0}")]
    Timeout(String, Duration),
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Status(#[from] tonic::Status),
    #[error("protocol: {0}")]
    Protocol(#[from] voxwire_proto::Violation),
    #[error(transparent)]
    Client(#[from] voxctl::ClientError),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Asks `check` until it gives a value or `timeout` passes. What it waits
/// for lives in other processes (a worker's state in the orchestrator, a
/// gauge returning to its baseline), so asking again is the only way to see it.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(what.to_string(), timeout));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A plain HTTP/2 channel to `HOST:PORT` (the matrix runs without TLS).
pub async fn connect(addr: &str) -> Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| Error::Setup(format!("{addr}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| Error::Setup(format!("connect {addr}: {e}")))
}

/// True when this run is CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    voxwire_testkit::in_ci()
}

/// Gap between two service starts in the start-order matrix:
/// `VOXWIRE_RELIABILITY_GAP_MS` (default 2,000 ms, so CI stays short; the
/// issue's "several seconds" is e.g. 5,000).
pub fn start_gap() -> Duration {
    let ms = std::env::var("VOXWIRE_RELIABILITY_GAP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    Duration::from_millis(ms)
}
