//! Starting the system under test: TTS workers, the orchestrator in front of
//! them, and the bare relay baseline, each its own process.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{BenchError, Result};
use crate::procs::{free_addr, Bins, Proc};

/// How long a process may take to report SERVING (a Piper worker loads and
/// warms its voice first; a debug build is slower).
const START_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone)]
pub enum Engine {
    /// The tone engine, optionally paced at real time.
    Tone { realtime: bool },
    /// The real Piper voice from this directory, with the worker's
    /// `--decode-window` when given.
    Piper {
        voice: PathBuf,
        decode_window: Option<String>,
    },
}

pub struct Stack {
    pub workers: Vec<Proc>,
    pub stt_worker: Option<Proc>,
    pub orchestrator: Option<Proc>,
    /// HOST:PORT of the orchestrator's HTTP side port.
    pub orchestrator_http: Option<String>,
    pub bare_relay: Option<Proc>,
}

impl Stack {
    pub fn worker_addrs(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.addr.clone()).collect()
    }

    pub fn orchestrator(&self) -> Option<&Proc> {
        self.orchestrator.as_ref()
    }

    /// Fails if any process of the stack died.
    pub fn check_alive(&mut self) -> Result<()> {
        for proc in self
            .workers
            .iter_mut()
            .chain(self.stt_worker.iter_mut())
            .chain(self.orchestrator.iter_mut())
            .chain(self.bare_relay.iter_mut())
        {
            proc.check_alive()?;
        }
        Ok(())
    }
}

/// What to start.
pub struct StackSpec {
    pub workers: usize,
    pub engine: Engine,
    pub orchestrator: bool,
    /// A bare pass-through relay in front of the first worker.
    pub bare_relay: bool,
    /// A Whisper model directory: one STT worker with it, in the
    /// orchestrator's STT pool (none: no STT worker, no STT pool).
    pub stt: Option<PathBuf>,
}

pub async fn start(spec: &StackSpec, bins: &Bins, logs: &Path, tag: &str) -> Result<Stack> {
    let mut workers = Vec::new();
    for i in 0..spec.workers {
        let addr = free_addr()?;
        let mut args = vec![
            "--listen".to_string(),
            addr.clone(),
            // Capacity must not be what limits a load run.
            "--max-sessions".into(),
            "100000".into(),
            "--session-idle-seconds".into(),
            "3600".into(),
        ];
        match &spec.engine {
            Engine::Tone { realtime } => {
                args.extend(["--engine".into(), "tone".into()]);
                if *realtime {
                    args.push("--realtime".into());
                }
            }
            Engine::Piper {
                voice,
                decode_window,
            } => {
                args.extend([
                    "--engine".into(),
                    "piper".into(),
                    "--voice".into(),
                    voice.display().to_string(),
                ]);
                if let Some(windows) = decode_window {
                    args.extend(["--decode-window".into(), windows.clone()]);
                }
            }
        }
        let name = format!("{tag}-tts-worker-{i}");
        workers.push(Proc::spawn(
            &bins.path("tts-worker"),
            &name,
            addr,
            &args,
            logs,
        )?);
    }
    for worker in &mut workers {
        worker.wait_serving("tts.TTSService", START_TIMEOUT).await?;
    }
    let stt_worker = match &spec.stt {
        Some(model) => {
            let addr = free_addr()?;
            let args = vec![
                "--listen".to_string(),
                addr.clone(),
                "--model".into(),
                model.display().to_string(),
            ];
            let mut proc = Proc::spawn(
                &bins.path("stt-worker"),
                &format!("{tag}-stt-worker"),
                addr,
                &args,
                logs,
            )?;
            proc.wait_serving("stt.STTService", START_TIMEOUT).await?;
            Some(proc)
        }
        None => None,
    };
    let targets = workers
        .iter()
        .map(|w| w.addr.clone())
        .collect::<Vec<_>>()
        .join(",");

    let mut orchestrator_http = None;
    let orchestrator = if spec.orchestrator {
        let addr = free_addr()?;
        let http = free_addr()?;
        let stt = stt_worker
            .as_ref()
            .map_or_else(String::new, |w| w.addr.clone());
        let args: Vec<String> = [
            "--listen",
            &addr,
            "--http-listen",
            &http,
            "--tts",
            &targets,
            "--stt",
            &stt,
            "--session-idle-seconds",
            "3600",
            "--default-worker-capacity",
            "100000",
            "--ready-wait-ms",
            "30000",
            "--call-timeout-ms",
            "30000",
            "--first-frame-timeout-ms",
            "60000",
            "--frame-timeout-ms",
            "30000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut proc = Proc::spawn(
            &bins.path("orchestrator"),
            &format!("{tag}-orchestrator"),
            addr,
            &args,
            logs,
        )?;
        proc.wait_serving("tts.TTSService", START_TIMEOUT).await?;
        // The orchestrator is SERVING with one ready worker; wait until its
        // pool lists them all, so load is spread from the first session.
        wait_pool_serving(&http, spec.workers, START_TIMEOUT).await?;
        orchestrator_http = Some(http);
        Some(proc)
    } else {
        None
    };

    let bare_relay = match (spec.bare_relay, workers.first()) {
        (true, Some(first)) => {
            let addr = free_addr()?;
            let args = vec![
                "bare-relay".to_string(),
                "--listen".into(),
                addr.clone(),
                "--upstream".into(),
                first.addr.clone(),
            ];
            let mut proc = Proc::spawn(
                &bins.voxbench,
                &format!("{tag}-bare-relay"),
                addr,
                &args,
                logs,
            )?;
            proc.wait_serving("", START_TIMEOUT).await?;
            Some(proc)
        }
        _ => None,
    };
    Ok(Stack {
        workers,
        stt_worker,
        orchestrator,
        orchestrator_http,
        bare_relay,
    })
}

/// Polls the orchestrator's `GET /api/workers` until `workers` endpoints are
/// SERVING, or fails after `timeout`.
async fn wait_pool_serving(http: &str, workers: usize, timeout: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(body) = voxwire_reliability::http::get(http, "/api/workers").await {
            let serving = serde_json::from_str::<Vec<serde_json::Value>>(&body)
                .map(|all| all.iter().filter(|e| e["state"] == "SERVING").count())
                .unwrap_or(0);
            if serving >= workers {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(BenchError::Setup(format!(
                "the orchestrator at {http} did not list {workers} SERVING workers within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
