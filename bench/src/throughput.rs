//! Throughput ceiling: unpaced streams from one tone worker, straight, through
//! a bare pass-through relay, and through the orchestrator, in the same run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{StartSessionRequest, TextChunk};

use crate::client::{cheap_text, tts_clients};
use crate::error::{BenchError, Result};
use crate::procs::{Bins, ProcStats};
use crate::stack::{self, Engine, StackSpec};

#[derive(Debug, Clone)]
pub struct ThroughputConfig {
    pub streams: usize,
    pub connections: usize,
    pub warmup: Duration,
    pub window: Duration,
    /// Each path is measured this many times, the paths taking turns.
    pub rounds: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct PathRound {
    pub path: &'static str,
    pub frames_per_second: f64,
    /// CPU of the relay process per 1,000 frames (absent for the direct path).
    pub relay_cpu_seconds_per_1000_frames: Option<f64>,
    pub errors: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputResult {
    pub streams: usize,
    pub window_seconds: f64,
    pub rounds: Vec<PathRound>,
    pub direct_fps: f64,
    pub bare_relay_fps: f64,
    pub orchestrator_fps: f64,
    /// orchestrator / bare relay.
    pub ratio: f64,
    pub bare_relay_cpu_seconds_per_1000_frames: f64,
    pub orchestrator_cpu_seconds_per_1000_frames: f64,
}

pub async fn run(config: &ThroughputConfig, bins: &Bins, logs: &Path) -> Result<ThroughputResult> {
    let spec = StackSpec {
        workers: 1,
        engine: Engine::Tone { realtime: false },
        orchestrator: true,
        bare_relay: true,
        stt: None,
    };
    let mut stack = stack::start(&spec, bins, logs, "throughput").await?;
    let worker = stack.worker_addrs().remove(0);
    let bare = stack
        .bare_relay
        .as_ref()
        .map(|p| (p.addr.clone(), p.pid()))
        .ok_or_else(|| BenchError::Setup("no bare relay".into()))?;
    let orchestrator = stack
        .orchestrator()
        .map(|p| (p.addr.clone(), p.pid()))
        .ok_or_else(|| BenchError::Setup("no orchestrator".into()))?;
    let text: Arc<str> = cheap_text(40).into();
    let mut rounds = Vec::new();
    for round in 0..config.rounds {
        for (path, addr, pid) in [
            ("direct", worker.clone(), None),
            ("bare_relay", bare.0.clone(), Some(bare.1)),
            ("orchestrator", orchestrator.0.clone(), Some(orchestrator.1)),
        ] {
            let r = measure(config, path, &addr, pid, round, Arc::clone(&text)).await?;
            println!(
                "  {path:>12} round {}: {:9.0} frames/s{}",
                round + 1,
                r.frames_per_second,
                r.relay_cpu_seconds_per_1000_frames
                    .map(|c| format!(", relay CPU {c:.4} s/1000 frames"))
                    .unwrap_or_default()
            );
            rounds.push(r);
            stack.check_alive()?;
        }
    }
    let mean = |path: &str, f: &dyn Fn(&PathRound) -> Option<f64>| {
        let values: Vec<f64> = rounds
            .iter()
            .filter(|r| r.path == path)
            .filter_map(f)
            .collect();
        values.iter().sum::<f64>() / values.len().max(1) as f64
    };
    let direct_fps = mean("direct", &|r| Some(r.frames_per_second));
    let bare_relay_fps = mean("bare_relay", &|r| Some(r.frames_per_second));
    let orchestrator_fps = mean("orchestrator", &|r| Some(r.frames_per_second));
    let result = ThroughputResult {
        streams: config.streams,
        window_seconds: config.window.as_secs_f64(),
        direct_fps,
        bare_relay_fps,
        orchestrator_fps,
        ratio: orchestrator_fps / bare_relay_fps,
        bare_relay_cpu_seconds_per_1000_frames: mean("bare_relay", &|r| {
            r.relay_cpu_seconds_per_1000_frames
        }),
        orchestrator_cpu_seconds_per_1000_frames: mean("orchestrator", &|r| {
            r.relay_cpu_seconds_per_1000_frames
        }),
        rounds,
    };
    println!(
        "  throughput: direct {:.0}, bare relay {:.0}, orchestrator {:.0} frames/s; orchestrator / bare = {:.2}",
        result.direct_fps, result.bare_relay_fps, result.orchestrator_fps, result.ratio
    );
    Ok(result)
}

async fn measure(
    config: &ThroughputConfig,
    path: &'static str,
    addr: &str,
    relay_pid: Option<u32>,
    round: usize,
    text: Arc<str>,
) -> Result<PathRound> {
    let clients = tts_clients(&[addr.to_string()], config.connections).await?;
    let mut sessions = Vec::new();
    for i in 0..config.streams {
        let mut client = clients[i % clients.len()].clone();
        let id = format!("tp-{path}-{round}-{i}");
        client
            .start_session(StartSessionRequest {
                session_id: id.clone(),
                ..Default::default()
            })
            .await?;
        sessions.push((client, id));
    }
    let start = Instant::now() + config.warmup;
    let end = start + config.window;
    let mut set = JoinSet::new();
    for (client, id) in sessions {
        set.spawn(stream_until(client, id, Arc::clone(&text), start, end));
    }
    tokio::time::sleep_until(start.into()).await;
    let cpu_start = relay_pid.map(ProcStats::read).transpose()?;
    tokio::time::sleep_until(end.into()).await;
    let cpu_end = relay_pid.map(ProcStats::read).transpose()?;
    let (mut frames, mut errors) = (0u64, 0usize);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((n, e)) => {
                frames += n;
                errors += e;
            }
            Err(_) => errors += 1,
        }
    }
    let relay_cpu = match (cpu_start, cpu_end) {
        (Some(a), Some(b)) if frames > 0 => {
            Some((b.cpu_seconds - a.cpu_seconds) * 1000.0 / frames as f64)
        }
        _ => None,
    };
    Ok(PathRound {
        path,
        frames_per_second: frames as f64 / config.window.as_secs_f64(),
        relay_cpu_seconds_per_1000_frames: relay_cpu,
        errors,
    })
}

/// Synthesizes `text` over and over, unpaced, counting the frames that
/// arrive in `[start, end)`; returns (frames, failed calls).
async fn stream_until(
    mut client: TtsServiceClient<Channel>,
    session_id: String,
    text: Arc<str>,
    start: Instant,
    end: Instant,
) -> (u64, usize) {
    let (mut counted, mut errors) = (0u64, 0usize);
    while Instant::now() < end {
        let chunk = TextChunk {
            session_id: session_id.clone(),
            text: text.to_string(),
            is_final: true,
            sequence_number: 1,
        };
        let mut frames = match client.synthesize(tokio_stream::iter([chunk])).await {
            Ok(response) => response.into_inner(),
            Err(_) => {
                errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        loop {
            match frames.message().await {
                Ok(Some(frame)) => {
                    let now = Instant::now();
                    if now >= end {
                        // Dropping the stream cancels the call.
                        return (counted, errors);
                    }
                    if now >= start {
                        counted += 1;
                    }
                    if frame.is_final {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
    }
    (counted, errors)
}
