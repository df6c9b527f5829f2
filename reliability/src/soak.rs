//! Load and soak: many concurrent client sessions, each sending many
//! messages through the orchestrator to unpaced tone workers. Every turn's
//! audio is compared with the tone engine's reference for its text, so a
//! lost, duplicated, reordered or misrouted frame counts as a failure.
//! Resident memory of the orchestrator is read after warm-up and at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::client::{self, TtsSession};
use crate::stack::{addresses, tone_workers, Orchestrator, OrchestratorConfig};
use crate::{Error, Result};

/// Short texts: turns are many and quick (tone: 30 ms of audio per character).
pub const TEXTS: &[&str] = &["Hi.", "Okay.", "Yes, go.", "Fine."];

#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub sessions: usize,
    pub messages: usize,
    /// Messages per session before the warm-up memory reading.
    pub warmup_messages: usize,
    pub workers: usize,
    /// Client sessions sharing one HTTP/2 connection to the orchestrator.
    pub sessions_per_connection: usize,
}

impl SoakConfig {
    /// The full soak: 1,000 sessions x 100 messages.
    pub fn full() -> SoakConfig {
        SoakConfig {
            sessions: 1_000,
            messages: 100,
            warmup_messages: 10,
            workers: 2,
            sessions_per_connection: 50,
        }
    }

    /// The CI form: 100 sessions x 100 messages (a few seconds). Fewer
    /// messages leave warm-up too short for the memory comparison to mean
    /// anything (allocator pools still growing).
    pub fn short() -> SoakConfig {
        SoakConfig {
            sessions: 100,
            messages: 100,
            warmup_messages: 20,
            workers: 2,
            sessions_per_connection: 25,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SoakReport {
    pub sessions: usize,
    pub turns_ok: u64,
    pub turns_failed: u64,
    pub frames: u64,
    /// Turns whose audio differed from the reference (lost/reordered frames).
    pub audio_mismatches: u64,
    pub first_failures: Vec<String>,
    pub rss_start_kib: u64,
    pub rss_after_warmup_kib: u64,
    pub rss_end_kib: u64,
    pub rss_after_close_kib: u64,
    pub warmup: Duration,
    pub run: Duration,
    pub turns_per_second: f64,
    /// The orchestrator's gauges came back to their start values after close.
    pub gauges_returned: bool,
}

impl SoakReport {
    /// End RSS relative to after warm-up (1.0 = equal).
    pub fn rss_ratio(&self) -> f64 {
        self.rss_end_kib as f64 / self.rss_after_warmup_kib.max(1) as f64
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "sessions": self.sessions,
            "turns_ok": self.turns_ok,
            "turns_failed": self.turns_failed,
            "frames": self.frames,
            "audio_mismatches": self.audio_mismatches,
            "first_failures": self.first_failures,
            "rss_start_kib": self.rss_start_kib,
            "rss_after_warmup_kib": self.rss_after_warmup_kib,
            "rss_end_kib": self.rss_end_kib,
            "rss_after_close_kib": self.rss_after_close_kib,
            "rss_end_over_warmup": self.rss_ratio(),
            "warmup_seconds": self.warmup.as_secs_f64(),
            "run_seconds": self.run.as_secs_f64(),
            "turns_per_second": self.turns_per_second,
            "gauges_returned": self.gauges_returned,
        })
    }
}

#[derive(Default)]
struct Tally {
    ok: u64,
    failed: u64,
    frames: u64,
    mismatches: u64,
    failures: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.frames += other.frames;
        self.mismatches += other.mismatches;
        for f in other.failures {
            if self.failures.len() < 10 {
                self.failures.push(f);
            }
        }
    }
}

async fn turns(
    session: &mut TtsSession,
    index: usize,
    range: std::ops::Range<usize>,
    references: &[Vec<u8>],
) -> Tally {
    let mut tally = Tally::default();
    for message in range {
        let which = (index + message) % TEXTS.len();
        match session.synthesize(TEXTS[which]).await {
            Ok(turn) => {
                tally.frames += turn.frames as u64;
                if turn.audio == references[which] {
                    tally.ok += 1;
                } else {
                    tally.mismatches += 1;
                    tally.failed += 1;
                    tally.failures.push(format!(
                        "{} message {message}: {} audio bytes, expected {}",
                        session.id,
                        turn.audio.len(),
                        references[which].len()
                    ));
                }
            }
            Err(error) => {
                tally.failed += 1;
                tally
                    .failures
                    .push(format!("{} message {message}: {error}", session.id));
            }
        }
    }
    tally
}

/// Runs the soak against an orchestrator and tone workers it starts itself.
pub async fn run(config: &SoakConfig) -> Result<SoakReport> {
    // Every session is open on a worker at once: room for all on each.
    let workers = tone_workers(config.workers, config.sessions + 16, false)?;
    for worker in &workers {
        worker
            .wait_serving(voxwire_proto::service_names::TTS, crate::stack::START)
            .await?;
    }
    // Generous deadlines: the soak measures loss and memory, not latency on
    // a 2-core machine shared with its own load generator.
    let orchestrator = Orchestrator::start(
        OrchestratorConfig::new(&addresses(&workers), &[])
            .flag("--first-frame-timeout-ms", 30_000)
            .flag("--frame-timeout-ms", 30_000)
            .flag("--ready-wait-ms", 30_000)
            .flag("--call-timeout-ms", 30_000),
    )
    .await?;
    for worker in &workers {
        orchestrator
            .wait_state(&worker.addr, "SERVING", crate::stack::START)
            .await?;
    }
    let mut references = Vec::new();
    for text in TEXTS {
        references.push(client::reference(&workers[0].addr, text).await?);
    }
    let references = Arc::new(references);
    let baseline = orchestrator.gauges().await?;
    let pid = orchestrator.service.pid;
    let rss = || crate::process::rss_kib(pid).unwrap_or(0);
    let rss_start_kib = rss();

    let connections = config
        .sessions
        .div_ceil(config.sessions_per_connection.max(1));
    let mut channels: Vec<Channel> = Vec::new();
    for _ in 0..connections {
        channels.push(orchestrator.channel().await?);
    }

    // Warm-up: open every session, send the first messages.
    let started = Instant::now();
    let warmup_end = config.warmup_messages.min(config.messages);
    let mut tasks = JoinSet::new();
    for index in 0..config.sessions {
        let channel = channels[index % channels.len()].clone();
        let references = Arc::clone(&references);
        tasks.spawn(async move {
            let id = client::session_id(&format!("soak{index}"));
            let mut session = match TtsSession::open(channel, &id).await {
                Ok(session) => session,
                Err(error) => {
                    let tally = Tally {
                        failed: 1,
                        failures: vec![format!("{id}: StartSession: {error}")],
                        ..Tally::default()
                    };
                    return (None, tally);
                }
            };
            let tally = turns(&mut session, index, 0..warmup_end, &references).await;
            (Some((index, session)), tally)
        });
    }
    let mut total = Tally::default();
    let mut sessions = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (session, tally) = joined.map_err(|e| Error::Setup(format!("soak task: {e}")))?;
        total.add(tally);
        sessions.extend(session);
    }
    let warmup = started.elapsed();
    let rss_after_warmup_kib = rss();

    // The run: the rest of the messages on the same sessions.
    let run_started = Instant::now();
    let mut tasks = JoinSet::new();
    let messages = config.messages;
    for (index, mut session) in sessions {
        let references = Arc::clone(&references);
        tasks.spawn(async move {
            let tally = turns(&mut session, index, warmup_end..messages, &references).await;
            (session, tally)
        });
    }
    let mut open = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (session, tally) = joined.map_err(|e| Error::Setup(format!("soak task: {e}")))?;
        total.add(tally);
        open.push(session);
    }
    let run = run_started.elapsed();
    let rss_end_kib = rss();
    for session in open {
        if let Err(error) = session.close().await {
            total.failures.push(format!("EndSession: {error}"));
        }
    }
    // The client connections' own server tasks are not a leak: close them
    // before comparing with the baseline, taken before they were opened.
    drop(channels);
    let gauges_returned = orchestrator
        .wait_baseline(&baseline, 16.0, Duration::from_secs(20))
        .await
        .is_ok();
    let rss_after_close_kib = rss();
    let turns = (total.ok + total.failed) as f64;
    Ok(SoakReport {
        sessions: config.sessions,
        turns_ok: total.ok,
        turns_failed: total.failed,
        frames: total.frames,
        audio_mismatches: total.mismatches,
        first_failures: total.failures,
        rss_start_kib,
        rss_after_warmup_kib,
        rss_end_kib,
        rss_after_close_kib,
        warmup,
        run,
        turns_per_second: turns / (warmup + run).as_secs_f64().max(1e-9),
        gauges_returned,
    })
}

/// The soak's pass conditions: no failed turn, no audio mismatch, end RSS
/// within 10% of after warm-up, gauges back to their start values.
pub fn verdict(report: &SoakReport) -> std::result::Result<(), String> {
    let mut why = Vec::new();
    if report.turns_failed > 0 {
        why.push(format!(
            "{} turns failed (first: {:?})",
            report.turns_failed, report.first_failures
        ));
    }
    if report.audio_mismatches > 0 {
        why.push(format!(
            "{} turns lost or reordered audio",
            report.audio_mismatches
        ));
    }
    if report.rss_ratio() > 1.10 {
        why.push(format!(
            "orchestrator RSS grew from {} KiB after warm-up to {} KiB",
            report.rss_after_warmup_kib, report.rss_end_kib
        ));
    }
    if !report.gauges_returned {
        why.push("the orchestrator's gauges did not return to baseline".into());
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}
