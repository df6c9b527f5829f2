//! The three services as processes, with the flags the matrix uses, and what
//! the orchestrator's side port says about them.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::Channel;
use voxwire_proto::{metrics as keys, stt, tts};

use crate::process::{free_port, Service, Signal};
use crate::{bins, http, wait_for, Error, Result};

/// Orchestrator deadlines for the fault matrix: short, so each fault's bound
/// is seconds, and the same figures the assertions use.
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_millis(2_000);
pub const FRAME_TIMEOUT: Duration = Duration::from_millis(1_500);
pub const READY_WAIT: Duration = Duration::from_millis(3_000);
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1_000);
pub const LOAD_POLL: Duration = Duration::from_millis(200);
/// HTTP/2 keepalive and the load-poll deadline (the orchestrator's defaults):
/// a frozen worker is out of service within about a second without traffic.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_millis(500);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_millis(500);
pub const LOAD_POLL_TIMEOUT: Duration = Duration::from_millis(1_000);
/// Bounds of the per-worker attempt deadline: a turn that reaches a frozen
/// worker first moves to another after at most about the floor (tone
/// workers answer in milliseconds).
pub const ATTEMPT_FLOOR: Duration = Duration::from_millis(750);
pub const ATTEMPT_CAP: Duration = Duration::from_millis(2_000);

/// Slack on top of a deadline for scheduling on a loaded 2-core machine.
pub const SLACK: Duration = Duration::from_millis(1_500);

/// How long a service may take to start listening, or a worker to be seen SERVING.
pub const START: Duration = Duration::from_secs(60);

fn ms(d: Duration) -> String {
    d.as_millis().to_string()
}

/// What an orchestrator is started with.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    pub tts: Vec<String>,
    pub stt: Vec<String>,
    /// Extra or overriding flags, e.g. ("--ready-wait-ms", "500").
    pub flags: Vec<(String, String)>,
    pub grpc_port: Option<u16>,
    pub http_port: Option<u16>,
}

impl OrchestratorConfig {
    pub fn new(tts: &[String], stt: &[String]) -> Self {
        OrchestratorConfig {
            tts: tts.to_vec(),
            stt: stt.to_vec(),
            flags: Vec::new(),
            grpc_port: None,
            http_port: None,
        }
    }

    pub fn flag(mut self, name: &str, value: impl ToString) -> Self {
        self.flags.push((name.to_string(), value.to_string()));
        self
    }
}

pub struct Orchestrator {
    pub service: Service,
    pub grpc: String,
    pub http: String,
}

impl Orchestrator {
    /// Starts the orchestrator and waits until its side port answers.
    pub async fn start(config: OrchestratorConfig) -> Result<Orchestrator> {
        let grpc = format!("127.0.0.1:{}", config.grpc_port.map_or_else(free_port, Ok)?);
        let http_addr = format!("127.0.0.1:{}", config.http_port.map_or_else(free_port, Ok)?);
        let mut args: Vec<(String, String)> = vec![
            ("--listen".into(), grpc.clone()),
            ("--http-listen".into(), http_addr.clone()),
            ("--tts".into(), config.tts.join(",")),
            ("--stt".into(), config.stt.join(",")),
            ("--first-frame-timeout-ms".into(), ms(FIRST_FRAME_TIMEOUT)),
            ("--frame-timeout-ms".into(), ms(FRAME_TIMEOUT)),
            ("--ready-wait-ms".into(), ms(READY_WAIT)),
            ("--call-timeout-ms".into(), ms(CALL_TIMEOUT)),
            ("--load-poll-ms".into(), ms(LOAD_POLL)),
            ("--load-poll-timeout-ms".into(), ms(LOAD_POLL_TIMEOUT)),
            ("--keepalive-interval-ms".into(), ms(KEEPALIVE_INTERVAL)),
            ("--keepalive-timeout-ms".into(), ms(KEEPALIVE_TIMEOUT)),
            ("--attempt-deadline-floor-ms".into(), ms(ATTEMPT_FLOOR)),
            ("--attempt-deadline-cap-ms".into(), ms(ATTEMPT_CAP)),
            ("--connect-timeout-ms".into(), "1000".into()),
            ("--connect-backoff-initial-ms".into(), "50".into()),
            ("--connect-backoff-max-ms".into(), "500".into()),
            ("--retry-backoff-initial-ms".into(), "20".into()),
            ("--retry-backoff-max-ms".into(), "200".into()),
            ("--drain-seconds".into(), "2".into()),
        ];
        for (name, value) in config.flags {
            match args.iter_mut().find(|(n, _)| *n == name) {
                Some(slot) => slot.1 = value,
                None => args.push((name, value)),
            }
        }
        let flat: Vec<String> = args.into_iter().flat_map(|(n, v)| [n, v]).collect();
        let service = Service::spawn("orchestrator", &bins::binary("orchestrator")?, &flat, None)?;
        let orchestrator = Orchestrator {
            service,
            grpc,
            http: http_addr,
        };
        let http = orchestrator.http.clone();
        wait_for("the orchestrator's side port", START, || {
            let http = http.clone();
            async move { http::get(&http, "/healthz").await.ok() }
        })
        .await
        .map_err(|e| orchestrator.explain(e))?;
        Ok(orchestrator)
    }

    /// Adds the orchestrator's log tail to an error.
    pub fn explain(&self, error: Error) -> Error {
        Error::Setup(format!("{error}\n{}", self.service.log_tail(40)))
    }

    pub async fn channel(&self) -> Result<Channel> {
        crate::connect(&self.grpc).await
    }

    pub async fn workers(&self) -> Result<Vec<WorkerRow>> {
        let body = http::get(&self.http, "/api/workers").await?;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&body)
            .map_err(|e| Error::Http(format!("/api/workers: {e}: {body}")))?;
        Ok(rows.iter().map(WorkerRow::from_json).collect())
    }

    pub async fn worker(&self, address: &str) -> Result<Option<WorkerRow>> {
        Ok(self
            .workers()
            .await?
            .into_iter()
            .find(|w| w.address == address))
    }

    pub async fn metrics(&self) -> Result<String> {
        http::get(&self.http, "/metrics").await
    }

    /// Waits until the endpoint `address` is in `state` (e.g. "SERVING").
    pub async fn wait_state(&self, address: &str, state: &str, timeout: Duration) -> Result<()> {
        wait_for(&format!("{address} to be {state}"), timeout, || async {
            let row = self.worker(address).await.ok().flatten()?;
            (row.state == state).then_some(())
        })
        .await
        .map_err(|e| self.explain(e))
    }

    /// Waits until the endpoint `address` is in any state but `state`.
    pub async fn wait_not_state(
        &self,
        address: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<String> {
        wait_for(&format!("{address} to leave {state}"), timeout, || async {
            let row = self.worker(address).await.ok().flatten()?;
            (row.state != state).then_some(row.state)
        })
        .await
        .map_err(|e| self.explain(e))
    }

    /// The leak gauges right now.
    pub async fn gauges(&self) -> Result<Gauges> {
        let text = self.metrics().await?;
        let workers = self.workers().await?;
        Ok(Gauges {
            active_sessions: http::sample(&text, "voxwire_orchestrator_active_sessions")
                .unwrap_or(f64::NAN),
            turns_in_flight: http::sum(&text, "voxwire_orchestrator_turns_in_flight", &[]),
            tasks: http::sample(&text, "voxwire_orchestrator_tokio_alive_tasks")
                .unwrap_or(f64::NAN),
            endpoint_in_flight: workers.iter().map(|w| w.in_flight).sum(),
        })
    }

    /// Waits until the gauges are back to `baseline` (tasks within
    /// `task_slack`, for connection tasks that come and go), and returns them.
    pub async fn wait_baseline(
        &self,
        baseline: &Gauges,
        task_slack: f64,
        timeout: Duration,
    ) -> Result<Gauges> {
        let last = std::sync::Mutex::new(None);
        let found = wait_for(
            "the orchestrator's gauges to return to baseline",
            timeout,
            || async {
                let now = self.gauges().await.ok()?;
                let back = now.active_sessions == baseline.active_sessions
                    && now.turns_in_flight == baseline.turns_in_flight
                    && now.endpoint_in_flight == baseline.endpoint_in_flight
                    && now.tasks <= baseline.tasks + task_slack;
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(now.clone());
                back.then_some(now)
            },
        )
        .await;
        let last = last.into_inner().unwrap_or_else(|e| e.into_inner());
        found.map_err(|e| Error::Setup(format!("{e}: baseline {baseline:?}, last {last:?}")))
    }
}

/// What must return to its value before a fault once the fault is over.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauges {
    pub active_sessions: f64,
    pub turns_in_flight: f64,
    pub tasks: f64,
    pub endpoint_in_flight: usize,
}

/// One row of GET /api/workers.
#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub address: String,
    pub kind: String,
    pub state: String,
    pub in_flight: usize,
    pub dispatched: u64,
}

impl WorkerRow {
    fn from_json(v: &serde_json::Value) -> WorkerRow {
        let text = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
        let number = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        WorkerRow {
            address: text("address"),
            kind: text("kind"),
            state: text("state"),
            in_flight: usize::try_from(number("in_flight")).unwrap_or(usize::MAX),
            dispatched: number("dispatched"),
        }
    }
}

/// A worker process and its gRPC address.
pub struct Worker {
    pub service: Service,
    pub addr: String,
    binary: PathBuf,
    args: Vec<String>,
    netns: Option<String>,
}

impl Worker {
    /// A tone-engine TTS worker on `port` (a free one when `None`).
    pub fn tone(port: Option<u16>, max_sessions: usize, realtime: bool) -> Result<Worker> {
        Worker::tone_at("127.0.0.1", port, max_sessions, realtime, None)
    }

    /// A tone worker listening on `host`, inside network namespace `netns`.
    pub fn tone_at(
        host: &str,
        port: Option<u16>,
        max_sessions: usize,
        realtime: bool,
        netns: Option<&str>,
    ) -> Result<Worker> {
        let addr = format!("{host}:{}", port.map_or_else(free_port, Ok)?);
        let mut args = vec![
            "--engine".to_string(),
            "tone".into(),
            "--listen".into(),
            addr.clone(),
            "--max-sessions".into(),
            max_sessions.to_string(),
            "--drain-seconds".into(),
            "1".into(),
        ];
        if realtime {
            args.push("--realtime".into());
        }
        Worker::spawn("tts-worker", "tts-worker", addr, args, netns)
    }

    /// A Whisper STT worker on `port`, with the model in `model`.
    pub fn stt(port: Option<u16>, model: &std::path::Path) -> Result<Worker> {
        let addr = format!("127.0.0.1:{}", port.map_or_else(free_port, Ok)?);
        let args = vec![
            "--listen".to_string(),
            addr.clone(),
            "--model".into(),
            model.display().to_string(),
            "--max-sessions".into(),
            "4".into(),
            "--drain-seconds".into(),
            "1".into(),
        ];
        Worker::spawn("stt-worker", "stt-worker", addr, args, None)
    }

    fn spawn(
        name: &str,
        binary: &str,
        addr: String,
        args: Vec<String>,
        netns: Option<&str>,
    ) -> Result<Worker> {
        let binary = bins::binary(binary)?;
        let service = Service::spawn(name, &binary, &args, netns)?;
        Ok(Worker {
            service,
            addr,
            binary,
            args,
            netns: netns.map(str::to_string),
        })
    }

    /// Kills the process and starts it again on the same address.
    pub fn restart(&mut self) -> Result<()> {
        self.service.kill();
        self.service = Service::spawn(
            &self.service.name,
            &self.binary,
            &self.args,
            self.netns.as_deref(),
        )?;
        Ok(())
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        self.service.signal(signal)
    }

    /// The worker's own GetCapabilities figures (active_streams...), asked directly.
    pub async fn load(&self, kind: &str) -> Result<std::collections::HashMap<String, f64>> {
        let channel = crate::connect(&self.addr).await?;
        let metrics = if kind == "stt" {
            let mut request = tonic::Request::new(stt::GetCapabilitiesRequest {});
            request.set_timeout(Duration::from_secs(2));
            stt::stt_service_client::SttServiceClient::new(channel)
                .get_capabilities(request)
                .await?
                .into_inner()
                .metrics
        } else {
            let mut request = tonic::Request::new(tts::GetCapabilitiesRequest {});
            request.set_timeout(Duration::from_secs(2));
            tts::tts_service_client::TtsServiceClient::new(channel)
                .get_capabilities(request)
                .await?
                .into_inner()
                .metrics
        };
        Ok(metrics)
    }

    /// Waits until the worker reports no stream in flight (capacity returned).
    pub async fn wait_idle(&self, kind: &str, timeout: Duration) -> Result<()> {
        wait_for(
            &format!("{} to have no active stream", self.addr),
            timeout,
            || async {
                let load = self.load(kind).await.ok()?;
                (load.get(keys::ACTIVE_STREAMS).copied() == Some(0.0)).then_some(())
            },
        )
        .await
        .map_err(|e| Error::Setup(format!("{e}\n{}", self.service.log_tail(20))))
    }

    /// Waits until the worker's own health says SERVING.
    pub async fn wait_serving(&self, service: &str, timeout: Duration) -> Result<()> {
        let addr = self.addr.clone();
        wait_for(&format!("{addr} to be SERVING"), timeout, || {
            let addr = addr.clone();
            async move {
                let status = voxctl::health::check(&addr, service).await.ok()?;
                (status == tonic_health::pb::health_check_response::ServingStatus::Serving)
                    .then_some(())
            }
        })
        .await
        .map_err(|e| Error::Setup(format!("{e}\n{}", self.service.log_tail(20))))
    }
}

/// Starts `n` tone workers.
pub fn tone_workers(n: usize, max_sessions: usize, realtime: bool) -> Result<Vec<Worker>> {
    (0..n)
        .map(|_| Worker::tone(None, max_sessions, realtime))
        .collect()
}

/// The addresses of `workers`.
pub fn addresses(workers: &[Worker]) -> Vec<String> {
    workers.iter().map(|w| w.addr.clone()).collect()
}

/// SIGKILLs a worker process without reaping the handle (it is reaped on drop).
pub fn sigkill(worker: &Worker) -> Result<()> {
    worker.signal(Signal::Kill)
}
