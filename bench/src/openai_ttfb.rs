//! Time to first audio of the OpenAI-compatible `POST /v1/audio/speech`
//! beside the gRPC `Speak` it is built on, the real Piper voice behind one
//! orchestrator, taking turns in the same run. What the HTTP side adds: JSON
//! parsing, a TCP connection per request (as the SDKs' first call), the
//! status line held until the first frame, WAV framing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient;

use crate::client::connect;
use crate::error::{io, BenchError, Result};
use crate::procs::Bins;
use crate::stack::{self, Engine, StackSpec};
use crate::stats::{Added, Pcts};
use crate::voice::{first_audio_speak, ONE_SENTENCE};

/// The streamed WAV header that precedes the first audio bytes.
const WAV_HEADER_BYTES: usize = 44;

#[derive(Debug, Clone)]
pub struct TtfbConfig {
    pub voice: PathBuf,
    pub runs: usize,
    /// Between calls, so a cancelled synthesis ends before the next is timed.
    pub pause: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct TtfbResult {
    pub voice: String,
    pub chars: usize,
    pub runs: usize,
    /// gRPC `Speak`: first frame carrying audio.
    pub speak_ms: Pcts,
    /// `POST /v1/audio/speech` (wav): first audio byte after the WAV header.
    pub http_ms: Pcts,
    pub added_ms: Added,
}

pub async fn run(config: &TtfbConfig, bins: &Bins, logs: &Path) -> Result<TtfbResult> {
    let spec = StackSpec {
        workers: 1,
        engine: Engine::Piper {
            voice: config.voice.clone(),
            // The worker's default (chunked) decoding, as users run it.
            decode_window: None,
        },
        orchestrator: true,
        bare_relay: false,
        stt: None,
    };
    let mut stack = stack::start(&spec, bins, logs, "openai").await?;
    let grpc = stack
        .orchestrator()
        .ok_or_else(|| BenchError::Setup("no orchestrator".into()))?
        .addr
        .clone();
    let http = stack
        .orchestrator_http
        .clone()
        .ok_or_else(|| BenchError::Setup("no orchestrator HTTP port".into()))?;
    let client = VoxwireClient::new(connect(&grpc).await?);
    // Not timed: warms both paths (sessions, connections to the worker).
    first_audio_speak(client.clone(), ONE_SENTENCE).await?;
    tokio::time::sleep(config.pause).await;
    first_audio_http(&http, ONE_SENTENCE).await?;
    tokio::time::sleep(config.pause).await;

    let (mut speak, mut through_http) = (Vec::new(), Vec::new());
    for _ in 0..config.runs {
        speak.push(first_audio_speak(client.clone(), ONE_SENTENCE).await?);
        tokio::time::sleep(config.pause).await;
        through_http.push(first_audio_http(&http, ONE_SENTENCE).await?);
        tokio::time::sleep(config.pause).await;
        stack.check_alive()?;
    }
    let (speak, through_http) = (Pcts::of(speak), Pcts::of(through_http));
    println!(
        "  first audio: Speak p50 {:.1} p95 {:.1} ms | /v1/audio/speech p50 {:.1} p95 {:.1} ms ({} runs each)",
        speak.p50, speak.p95, through_http.p50, through_http.p95, config.runs
    );
    Ok(TtfbResult {
        voice: config.voice.display().to_string(),
        chars: ONE_SENTENCE.chars().count(),
        runs: config.runs,
        speak_ms: speak,
        added_ms: through_http.minus(&speak),
        http_ms: through_http,
    })
}

/// Milliseconds from connecting to the first audio byte of a streamed WAV
/// reply; the connection is then dropped, which cancels the turn.
async fn first_audio_http(addr: &str, text: &str) -> Result<f64> {
    let body = serde_json::json!({
        "model": "tts-1", "voice": "alloy", "input": text, "response_format": "wav"
    })
    .to_string();
    let request = format!(
        "POST /v1/audio/speech HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(io(format!("connecting to {addr}")))?;
    stream.set_nodelay(true).map_err(io("TCP_NODELAY"))?;
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(io("sending the speech request"))?;
    let mut received = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let n = stream
            .read(&mut buffer)
            .await
            .map_err(io("reading the speech reply"))?;
        if n == 0 {
            return Err(BenchError::Setup(format!(
                "/v1/audio/speech closed before audio: {}",
                String::from_utf8_lossy(&received)
            )));
        }
        received.extend_from_slice(&buffer[..n]);
        if let Some(audio) = audio_bytes(&received)? {
            if audio > 0 {
                return Ok(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
}

/// Audio bytes received so far past the status line, headers, the first
/// chunk's size line and the WAV header; `None` while the headers are
/// incomplete. A status other than 200 is an error.
fn audio_bytes(received: &[u8]) -> Result<Option<usize>> {
    let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&received[..end]);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(BenchError::Setup(format!(
            "/v1/audio/speech answered: {}",
            String::from_utf8_lossy(received)
        )));
    }
    let body = &received[end + 4..];
    let Some(line) = body.windows(2).position(|w| w == b"\r\n") else {
        return Ok(Some(0));
    };
    Ok(Some(body.len().saturating_sub(line + 2 + WAV_HEADER_BYTES)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_counts_only_past_headers_chunk_line_and_wav_header() {
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        assert_eq!(audio_bytes(&head[..10]).expect("ok"), None);
        assert_eq!(audio_bytes(&head).expect("ok"), Some(0));
        let mut first = head.clone();
        first.extend_from_slice(b"3c\r\n");
        first.extend_from_slice(&[0u8; WAV_HEADER_BYTES + 16]);
        assert_eq!(audio_bytes(&first).expect("ok"), Some(16));
        assert!(audio_bytes(b"HTTP/1.1 503 Service Unavailable\r\n\r\n{}").is_err());
    }
}
