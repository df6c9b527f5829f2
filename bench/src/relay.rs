//! Relay overhead: N concurrent sessions speaking through the orchestrator
//! to tone workers paced at real time, against the same load sent straight
//! to the workers, in the same run and on the same processes.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{StartSessionRequest, TextChunk};
use voxwire_proto::tts_stream::TtsStreamValidator;

use crate::client::tts_clients;
use crate::error::{BenchError, Result};
use crate::procs::{Bins, ProcStats};
use crate::stack::{self, Engine, Stack, StackSpec};
use crate::stats::{Added, Pcts};

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub levels: Vec<usize>,
    pub workers: usize,
    /// What every session speaks.
    pub text: String,
    /// Session starts are spread evenly over this window.
    pub ramp: Duration,
    /// StartSession calls in flight at once while opening.
    pub open_concurrency: usize,
    /// Sessions per client connection (the client's side of the load).
    pub sessions_per_connection: usize,
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Client straight to the workers: the baseline.
    Direct,
    /// Client to the orchestrator's tts.TTSService relay, which dispatches to the workers.
    Orchestrator,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Orchestrator => "orchestrator",
        }
    }
}

/// What one session saw.
#[derive(Debug, Default)]
struct SessionOutcome {
    first_frame_ms: Option<f64>,
    /// |gap - frame duration| between consecutive audio frames, ms.
    jitter_ms: Vec<f32>,
    frames: u64,
    sequence_errors: u64,
    final_seen: bool,
    error: Option<String>,
}

/// The orchestrator's cost in one mode (from /proc).
#[derive(Debug, Clone, Serialize)]
pub struct ProcessCost {
    pub cpu_seconds_speaking: f64,
    pub cpu_seconds_per_1000_frames: f64,
    pub rss_base_kib: u64,
    pub rss_idle_kib: u64,
    pub rss_speaking_peak_kib: u64,
    /// (RSS with the sessions open and silent - RSS before) / sessions.
    pub idle_bytes_per_session: f64,
    /// (peak RSS while speaking - RSS before) / sessions.
    pub speaking_bytes_per_session: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeResult {
    pub mode: Mode,
    pub sessions: usize,
    pub client_connections: usize,
    pub opened: usize,
    pub open_errors: usize,
    pub call_errors: usize,
    pub first_error: Option<String>,
    pub first_frame_ms: Pcts,
    pub jitter_ms: Pcts,
    pub frames_received: u64,
    pub frames_expected: u64,
    /// Expected minus received, over every session (a failed call loses all of its frames).
    pub frames_lost: u64,
    /// Frames the protocol's stream validator rejected (a skipped or repeated
    /// sequence number among them).
    pub sequence_errors: u64,
    pub streams_without_final: u64,
    pub wall_seconds: f64,
    /// The orchestrator's cost (also measured in direct mode, where it idles).
    pub orchestrator: ProcessCost,
    pub workers_cpu_seconds: f64,
    pub client_cpu_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LevelResult {
    pub sessions: usize,
    pub direct: ModeResult,
    pub orchestrator: ModeResult,
    /// Orchestrator minus direct, percentile by percentile.
    pub added_first_frame_ms: Added,
}

/// Runs every level on a fresh stack (so one level's memory does not hide
/// the next one's).
pub async fn run(config: &RelayConfig, bins: &Bins, logs: &Path) -> Result<Vec<LevelResult>> {
    let mut results = Vec::new();
    let mut expected = None;
    for &sessions in &config.levels {
        let spec = StackSpec {
            workers: config.workers,
            engine: Engine::Tone { realtime: true },
            orchestrator: true,
            bare_relay: false,
            stt: None,
        };
        let mut stack = stack::start(&spec, bins, logs, &format!("relay-{sessions}")).await?;
        let expected = match expected {
            Some(frames) => frames,
            None => {
                let frames = calibrate(&stack, &config.text).await?;
                expected = Some(frames);
                frames
            }
        };
        let direct = run_mode(Mode::Direct, sessions, config, &mut stack, expected).await?;
        print_mode(&direct);
        let through = run_mode(Mode::Orchestrator, sessions, config, &mut stack, expected).await?;
        print_mode(&through);
        let added = through.first_frame_ms.minus(&direct.first_frame_ms);
        println!(
            "  N={sessions:>5}: added first-frame latency p50 {:+.2} ms  p95 {:+.2} ms  p99 {:+.2} ms",
            added.p50, added.p95, added.p99
        );
        results.push(LevelResult {
            sessions,
            direct,
            orchestrator: through,
            added_first_frame_ms: added,
        });
    }
    Ok(results)
}

fn print_mode(r: &ModeResult) {
    println!(
        "  N={:>5} {:>12}: first frame p50 {:7.2} p95 {:7.2} p99 {:7.2} ms | jitter p95 {:6.2} ms | lost {} | seq errors {} | errors {} | orch CPU {:.3} s/1000 frames, RSS/session idle {:.0} B speaking {:.0} B",
        r.sessions,
        r.mode.as_str(),
        r.first_frame_ms.p50,
        r.first_frame_ms.p95,
        r.first_frame_ms.p99,
        r.jitter_ms.p95,
        r.frames_lost,
        r.sequence_errors,
        r.open_errors + r.call_errors,
        r.orchestrator.cpu_seconds_per_1000_frames,
        r.orchestrator.idle_bytes_per_session,
        r.orchestrator.speaking_bytes_per_session,
    );
}

/// Frames in one complete stream of `text`, from one unloaded direct call.
async fn calibrate(stack: &Stack, text: &str) -> Result<u64> {
    let addr = stack
        .workers
        .first()
        .ok_or_else(|| BenchError::Setup("no worker".into()))?
        .addr
        .clone();
    let mut client = tts_clients(&[addr], 1)
        .await?
        .pop()
        .ok_or_else(|| BenchError::Setup("no client".into()))?;
    client
        .start_session(StartSessionRequest {
            session_id: "calibrate".into(),
            ..Default::default()
        })
        .await?;
    let outcome = speak(client, "calibrate".into(), text.into(), Instant::now()).await;
    if let Some(error) = outcome.error {
        return Err(BenchError::Setup(format!(
            "calibration call failed: {error}"
        )));
    }
    if !outcome.final_seen || outcome.sequence_errors > 0 {
        return Err(BenchError::Setup(
            "calibration stream was not a valid stream".into(),
        ));
    }
    Ok(outcome.frames)
}

async fn run_mode(
    mode: Mode,
    sessions: usize,
    config: &RelayConfig,
    stack: &mut Stack,
    expected: u64,
) -> Result<ModeResult> {
    let orchestrator_pid = stack
        .orchestrator()
        .ok_or_else(|| BenchError::Setup("no orchestrator".into()))?
        .pid();
    let worker_pids: Vec<u32> = stack.workers.iter().map(|w| w.pid()).collect();
    let connections = sessions
        .div_ceil(config.sessions_per_connection)
        .clamp(1, config.max_connections);
    let clients = match mode {
        Mode::Direct => {
            let addrs = stack.worker_addrs();
            tts_clients(&addrs, connections.div_ceil(addrs.len().max(1))).await?
        }
        Mode::Orchestrator => {
            let addr = stack
                .orchestrator()
                .map(|o| o.addr.clone())
                .ok_or_else(|| BenchError::Setup("no orchestrator".into()))?;
            tts_clients(&[addr], connections).await?
        }
    };
    let client_connections = clients.len();
    let text: Arc<str> = config.text.clone().into();

    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = ProcStats::read(orchestrator_pid)?;
    let workers_base = cpu_of(&worker_pids)?;
    let client_base = ProcStats::own()?;
    let started = Instant::now();

    // Open every session, silent.
    let gate = Arc::new(Semaphore::new(config.open_concurrency.max(1)));
    let mut opening = JoinSet::new();
    for i in 0..sessions {
        let mut client = clients[i % clients.len()].clone();
        let gate = Arc::clone(&gate);
        let id = format!("{}-{sessions}-{i}", mode.as_str());
        opening.spawn(async move {
            let _permit = gate.acquire_owned().await;
            client
                .start_session(StartSessionRequest {
                    session_id: id.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| (i, id, client))
        });
    }
    let mut opened = Vec::new();
    let mut open_errors = 0;
    let mut first_error = None;
    while let Some(joined) = opening.join_next().await {
        match joined {
            Ok(Ok(session)) => opened.push(session),
            Ok(Err(status)) => {
                open_errors += 1;
                first_error.get_or_insert_with(|| format!("StartSession: {status}"));
            }
            Err(join) => {
                open_errors += 1;
                first_error.get_or_insert_with(|| format!("StartSession task: {join}"));
            }
        }
    }
    opened.sort_by_key(|(i, _, _)| *i);
    stack.check_alive()?;
    // Let allocations settle before reading the idle footprint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = ProcStats::read(orchestrator_pid)?;

    // Speak: starts spread over the ramp, all paced at real time.
    let peak = Arc::new(AtomicU64::new(idle.rss_kib));
    let (stop_tx, stop_rx) = watch::channel(false);
    let sampler = tokio::spawn(sample_rss(orchestrator_pid, Arc::clone(&peak), stop_rx));
    let speak_base = ProcStats::read(orchestrator_pid)?;
    let t0 = Instant::now() + Duration::from_millis(50);
    let mut speaking = JoinSet::new();
    let n = opened.len().max(1) as u32;
    for (k, (_, id, client)) in opened.into_iter().enumerate() {
        let at = t0 + config.ramp.mul_f64(f64::from(k as u32) / f64::from(n));
        speaking.spawn(speak(client, id, Arc::clone(&text), at));
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = speaking.join_next().await {
        outcomes.push(joined.unwrap_or_else(|join| SessionOutcome {
            error: Some(format!("session task: {join}")),
            ..Default::default()
        }));
    }
    let after = ProcStats::read(orchestrator_pid)?;
    let _ = stop_tx.send(true);
    let _ = sampler.await;
    stack.check_alive()?;
    let wall_seconds = started.elapsed().as_secs_f64();

    let frames_received: u64 = outcomes.iter().map(|o| o.frames).sum();
    let frames_expected = expected * sessions as u64;
    let frames_lost = outcomes
        .iter()
        .map(|o| expected.saturating_sub(o.frames))
        .sum::<u64>()
        + expected * (sessions - outcomes.len()) as u64;
    let call_errors = outcomes.iter().filter(|o| o.error.is_some()).count();
    if first_error.is_none() {
        first_error = outcomes.iter().find_map(|o| o.error.clone());
    }
    let cpu_speaking = after.cpu_seconds - speak_base.cpu_seconds;
    let per_session = |kib: u64| (kib.saturating_sub(base.rss_kib) * 1024) as f64 / sessions as f64;
    let peak_kib = peak.load(Ordering::Relaxed).max(after.rss_kib);
    Ok(ModeResult {
        mode,
        sessions,
        client_connections,
        opened: outcomes.len(),
        open_errors,
        call_errors,
        first_error,
        first_frame_ms: Pcts::of(outcomes.iter().filter_map(|o| o.first_frame_ms).collect()),
        jitter_ms: Pcts::of(
            outcomes
                .iter()
                .flat_map(|o| o.jitter_ms.iter().map(|j| f64::from(*j)))
                .collect(),
        ),
        frames_received,
        frames_expected,
        frames_lost,
        sequence_errors: outcomes.iter().map(|o| o.sequence_errors).sum(),
        streams_without_final: outcomes.iter().filter(|o| !o.final_seen).count() as u64,
        wall_seconds,
        orchestrator: ProcessCost {
            cpu_seconds_speaking: cpu_speaking,
            cpu_seconds_per_1000_frames: if frames_received > 0 {
                cpu_speaking * 1000.0 / frames_received as f64
            } else {
                f64::NAN
            },
            rss_base_kib: base.rss_kib,
            rss_idle_kib: idle.rss_kib,
            rss_speaking_peak_kib: peak_kib,
            idle_bytes_per_session: per_session(idle.rss_kib),
            speaking_bytes_per_session: per_session(peak_kib),
        },
        workers_cpu_seconds: cpu_of(&worker_pids)? - workers_base,
        client_cpu_seconds: ProcStats::own()?.cpu_seconds - client_base.cpu_seconds,
    })
}

fn cpu_of(pids: &[u32]) -> Result<f64> {
    pids.iter()
        .map(|pid| ProcStats::read(*pid).map(|s| s.cpu_seconds))
        .sum()
}

async fn sample_rss(pid: u32, peak: Arc<AtomicU64>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Ok(stats) = ProcStats::read(pid) {
                    peak.fetch_max(stats.rss_kib, Ordering::Relaxed);
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// One Synthesize call of `text` on an open session, started at `at`.
async fn speak(
    mut client: TtsServiceClient<Channel>,
    session_id: String,
    text: Arc<str>,
    at: Instant,
) -> SessionOutcome {
    tokio::time::sleep_until(at.into()).await;
    let mut outcome = SessionOutcome::default();
    let mut validator = TtsStreamValidator::new(session_id.as_str());
    let chunk = TextChunk {
        session_id,
        text: text.to_string(),
        is_final: true,
        sequence_number: 1,
    };
    let sent = Instant::now();
    let mut frames = match client.synthesize(tokio_stream::iter([chunk])).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            outcome.error = Some(format!("Synthesize: {status}"));
            return outcome;
        }
    };
    let mut last_audio: Option<Instant> = None;
    let mut audio_frames = 0u32;
    loop {
        let frame = match frames.message().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(status) => {
                outcome.error = Some(format!("Synthesize stream: {status}"));
                break;
            }
        };
        let now = Instant::now();
        outcome
            .first_frame_ms
            .get_or_insert_with(|| (now - sent).as_secs_f64() * 1000.0);
        // The protocol's own validator (sequence numbers, session echo, frame
        // validity), not a second copy of its rules.
        if validator.observe(&frame).is_err() {
            outcome.sequence_errors += 1;
        }
        outcome.frames += 1;
        if !frame.audio_data.is_empty() {
            // The worker's pacing clock starts before the first sentence is
            // synthesized, so the gap after the first frame is short by that
            // synthesis time in every mode; it is left out.
            if let (Some(previous), true) = (last_audio, audio_frames >= 2) {
                let nominal = f64::from(frame.frame_duration_ms.max(0));
                let gap = (now - previous).as_secs_f64() * 1000.0;
                outcome.jitter_ms.push((gap - nominal).abs() as f32);
            }
            last_audio = Some(now);
            audio_frames += 1;
        }
        if frame.is_final {
            outcome.final_seen = true;
            break;
        }
    }
    outcome
}
