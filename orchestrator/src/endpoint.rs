//! One worker endpoint: its HTTP/2 channel, kept connected with backoff, its
//! readiness from the `grpc.health.v1` Watch stream (or, for workers without
//! a health service, GetCapabilities probes), and its reported load.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use voxwire_proto::{metrics as keys, service_names, stt, tts};

use crate::config::EndpointSettings;
use crate::metrics::{self, Metrics};

/// Which pool an endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tts,
    Stt,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tts => "tts",
            Kind::Stt => "stt",
        }
    }

    pub fn parse(kind: &str) -> Option<Kind> {
        match kind {
            "tts" => Some(Kind::Tts),
            "stt" => Some(Kind::Stt),
            _ => None,
        }
    }

    /// The service name a worker of this kind serves (and reports health for).
    pub fn service_name(self) -> &'static str {
        match self {
            Kind::Tts => service_names::TTS,
            Kind::Stt => service_names::STT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EndpointState {
    /// Dialing, or waiting to dial again.
    Connecting,
    /// Connected; readiness not known yet.
    Connected,
    Serving,
    NotServing,
    /// Connection lost; reconnecting.
    Disconnected,
    /// Reconnect attempts exhausted (--connect-max-attempts).
    Failed,
    /// Connected, but not answering in time: a load poll or a turn ran
    /// past its deadline (a wedged or stopped process, a cut network). No
    /// work goes there until a load poll is answered again.
    Unresponsive,
}

impl EndpointState {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Connecting => "CONNECTING",
            EndpointState::Connected => "CONNECTED",
            EndpointState::Serving => "SERVING",
            EndpointState::NotServing => "NOT_SERVING",
            EndpointState::Disconnected => "DISCONNECTED",
            EndpointState::Failed => "FAILED",
            EndpointState::Unresponsive => "UNRESPONSIVE",
        }
    }
}

/// Load as the worker last reported it; a missing key is unknown, not zero.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReportedLoad {
    pub load: Option<f64>,
    pub active_sessions: Option<f64>,
    pub active_streams: Option<f64>,
    pub queued_requests: Option<f64>,
    pub max_sessions: Option<f64>,
}

impl ReportedLoad {
    fn from_metrics(metrics: &HashMap<String, f64>) -> ReportedLoad {
        let get = |key: &str| metrics.get(key).copied().filter(|v| v.is_finite());
        ReportedLoad {
            load: get(keys::LOAD),
            active_sessions: get(keys::ACTIVE_SESSIONS),
            active_streams: get(keys::ACTIVE_STREAMS),
            queued_requests: get(keys::QUEUED_REQUESTS),
            max_sessions: get(keys::MAX_SESSIONS).filter(|m| *m > 0.0),
        }
    }
}

#[derive(Debug)]
struct Inner {
    /// What the connection and the health service say.
    state: EndpointState,
    /// Set when the worker let a deadline pass; hides `state` (see
    /// [`EndpointState::Unresponsive`]) until it answers again.
    unresponsive: bool,
    channel: Option<Channel>,
    load: ReportedLoad,
    last_change: SystemTime,
    health_probe: bool,
}

impl Inner {
    /// The state selection and operators see: a worker that let a deadline
    /// pass is UNRESPONSIVE while connected, whatever its health last said.
    fn effective(&self) -> EndpointState {
        match self.state {
            EndpointState::Serving | EndpointState::NotServing | EndpointState::Connected
                if self.unresponsive =>
            {
                EndpointState::Unresponsive
            }
            state => state,
        }
    }
}

/// HTTP/2 receive window of one worker stream, in bytes (the h2 default):
/// about 1.5 s of 22,050 Hz audio, what a stalled turn can leave unread.
pub const STREAM_WINDOW: u32 = 65_535;
/// Streams that may sit full at once without slowing the others of their
/// connection: above any worker's --max-sessions default.
pub const CONNECTION_STREAMS: u32 = 256;

/// First-answer latencies kept per endpoint: enough for a p95 that follows
/// a change of load within a few dozen turns.
const LATENCY_SAMPLES: usize = 64;

/// Shared by the pool (selection), dispatch (the channel) and the monitor task.
#[derive(Debug)]
pub struct Endpoint {
    pub address: String,
    pub kind: Kind,
    inner: Mutex<Inner>,
    in_flight: AtomicUsize,
    dispatched: AtomicU64,
    /// The latest first-answer latencies of turns here (oldest first): what
    /// this worker normally takes, for the attempt deadline.
    first_answers: Mutex<VecDeque<Duration>>,
    default_capacity: usize,
    /// Bumped on every change that can make a waiting turn dispatchable.
    changed: Arc<watch::Sender<u64>>,
    metrics: Arc<Metrics>,
}

/// What GET /api/workers shows per endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointSnapshot {
    pub address: String,
    pub kind: Kind,
    pub state: EndpointState,
    pub in_flight: usize,
    pub dispatched: u64,
    pub reported_load: ReportedLoad,
    /// Seconds since the Unix epoch.
    pub last_change: f64,
    /// True when readiness comes from GetCapabilities probes (no health service).
    pub health_probe: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Endpoint {
    pub fn new(
        address: String,
        kind: Kind,
        settings: &EndpointSettings,
        changed: Arc<watch::Sender<u64>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            address,
            kind,
            inner: Mutex::new(Inner {
                state: EndpointState::Connecting,
                unresponsive: false,
                channel: None,
                load: ReportedLoad::default(),
                last_change: SystemTime::now(),
                health_probe: false,
            }),
            in_flight: AtomicUsize::new(0),
            dispatched: AtomicU64::new(0),
            first_answers: Mutex::new(VecDeque::with_capacity(LATENCY_SAMPLES)),
            default_capacity: settings.default_capacity,
            changed,
            metrics,
        })
    }

    pub fn state(&self) -> EndpointState {
        lock(&self.inner).effective()
    }

    pub fn channel(&self) -> Option<Channel> {
        lock(&self.inner).channel.clone()
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub fn dispatched(&self) -> u64 {
        self.dispatched.load(Ordering::Acquire)
    }

    /// Turns this endpoint can take at once: what it reports, or the default.
    pub fn capacity(&self) -> usize {
        lock(&self.inner)
            .load
            .max_sessions
            .map_or(self.default_capacity, |m| m as usize)
            .max(1)
    }

    /// SERVING, connected, with room for one more turn.
    pub fn is_dispatchable(&self) -> bool {
        self.accepts(false)
    }

    /// Like [`Endpoint::is_dispatchable`] for a session already open here:
    /// it holds one of the worker's slots, so a worker reporting itself full
    /// (load 1.0, often because of this orchestrator's own sessions) still
    /// takes its turns.
    pub fn accepts_bound_session(&self) -> bool {
        self.accepts(true)
    }

    fn accepts(&self, bound: bool) -> bool {
        let inner = lock(&self.inner);
        let capacity = inner
            .load
            .max_sessions
            .map_or(self.default_capacity, |m| m as usize)
            .max(1);
        inner.effective() == EndpointState::Serving
            && inner.channel.is_some()
            && (bound || inner.load.load.is_none_or(|load| load < 1.0))
            && self.in_flight() < capacity
    }

    /// Lower is better: the worker's own load figure plus this orchestrator's
    /// turns in flight there that the worker may not have reported yet.
    pub fn score(&self) -> f64 {
        let inner = lock(&self.inner);
        let capacity = inner
            .load
            .max_sessions
            .unwrap_or(self.default_capacity as f64)
            .max(1.0);
        let reported = inner
            .load
            .load
            .or_else(|| inner.load.active_streams.map(|s| s / capacity))
            // Unknown load counts as half busy: neither favoured nor shunned.
            .unwrap_or(0.5);
        let queued = inner.load.queued_requests.unwrap_or(0.0) / capacity;
        reported + queued + self.in_flight() as f64 / capacity
    }

    /// A turn here got its first answer (first frame, or Recognize's
    /// response) `latency` after it could have: what the attempt deadline
    /// of later turns is derived from.
    pub fn record_first_answer(&self, latency: Duration) {
        let mut samples = lock(&self.first_answers);
        if samples.len() == LATENCY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(latency);
    }

    /// The 95th percentile of the recent first-answer latencies; `None`
    /// before any turn here got one.
    pub fn first_answer_p95(&self) -> Option<Duration> {
        let mut samples: Vec<Duration> = lock(&self.first_answers).iter().copied().collect();
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let rank = (samples.len() * 95).div_ceil(100).max(1) - 1;
        samples.get(rank).copied()
    }

    pub(crate) fn begin_turn(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.dispatched.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn end_turn(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        // Capacity freed: a waiting turn may go now.
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn snapshot(&self) -> EndpointSnapshot {
        let inner = lock(&self.inner);
        EndpointSnapshot {
            address: self.address.clone(),
            kind: self.kind,
            state: inner.effective(),
            in_flight: self.in_flight(),
            dispatched: self.dispatched(),
            reported_load: inner.load.clone(),
            last_change: inner
                .last_change
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            health_probe: inner.health_probe,
        }
    }

    fn set_state(&self, state: EndpointState) {
        self.update(|inner| inner.state = state, "");
    }

    /// The worker let a deadline pass (`why`): no work goes there until it
    /// answers a load poll again. A stopped process keeps its connection and
    /// its last health status, so neither would ever say so.
    pub fn mark_unresponsive(&self, why: &str) {
        self.update(|inner| inner.unresponsive = true, why);
    }

    /// The worker answered: its health status counts again.
    fn mark_responsive(&self) {
        self.update(|inner| inner.unresponsive = false, "");
    }

    /// Applies `change`, and reports a change of the effective state.
    fn update(&self, change: impl FnOnce(&mut Inner), why: &str) {
        let (from, state) = {
            let mut inner = lock(&self.inner);
            let from = inner.effective();
            change(&mut inner);
            let state = inner.effective();
            if from == state {
                return;
            }
            inner.last_change = SystemTime::now();
            (from, state)
        };
        if state == EndpointState::Unresponsive {
            tracing::warn!(endpoint = %self.address, kind = self.kind.as_str(), from = from.as_str(), %why, "worker unresponsive");
        } else {
            tracing::info!(endpoint = %self.address, kind = self.kind.as_str(), from = from.as_str(), to = state.as_str(), "worker state");
        }
        self.metrics.inc(
            metrics::HEALTH_TRANSITIONS,
            &[("kind", self.kind.as_str()), ("to", state.as_str())],
        );
        self.changed.send_modify(|g| *g += 1);
    }

    fn set_channel(&self, channel: Option<Channel>) {
        lock(&self.inner).channel = channel;
    }

    fn set_load(&self, load: ReportedLoad) {
        lock(&self.inner).load = load;
        self.changed.send_modify(|g| *g += 1);
    }

    fn set_probe(&self, probe: bool) {
        lock(&self.inner).health_probe = probe;
    }

    /// Keeps the endpoint connected and its state current until aborted, or
    /// until reconnect attempts run out.
    pub async fn monitor(self: Arc<Self>, settings: EndpointSettings) {
        let mut failures = 0u32;
        loop {
            self.set_state(EndpointState::Connecting);
            match self.connect(&settings).await {
                Ok(channel) => {
                    failures = 0;
                    // A new connection starts trusted; the first load poll
                    // (before any health status) tells at once if it is not.
                    self.mark_responsive();
                    self.set_channel(Some(channel.clone()));
                    self.set_state(EndpointState::Connected);
                    let reason = self.follow(channel, &settings).await;
                    self.set_channel(None);
                    tracing::warn!(endpoint = %self.address, %reason, "worker connection lost");
                    self.set_state(EndpointState::Disconnected);
                }
                Err(error) => {
                    let error = voxwire_service::error_chain(&error);
                    tracing::debug!(endpoint = %self.address, %error, "connect failed");
                }
            }
            failures += 1;
            if !settings.reconnect.allows_after(failures) {
                tracing::error!(endpoint = %self.address, failures, "giving up on worker");
                self.set_state(EndpointState::Failed);
                return;
            }
            tokio::time::sleep(settings.reconnect.delay(failures)).await;
        }
    }

    async fn connect(
        &self,
        settings: &EndpointSettings,
    ) -> Result<Channel, tonic::transport::Error> {
        // TLS (mutual when settings.tls carries a client identity) when configured.
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let mut endpoint = TonicEndpoint::from_shared(format!("{scheme}://{}", self.address))?;
        if let Some(tls) = &settings.tls {
            endpoint = endpoint.tls_config(tls.config())?;
        }
        endpoint
            .connect_timeout(settings.connect_timeout)
            // Turns share one HTTP/2 connection per worker. Frames a slow
            // client has not taken yet hold their stream's window and also
            // the connection's; with the defaults (64 KiB each) one unread
            // stream starved every other turn on that worker. A connection
            // window of STREAM_WINDOW x CONNECTION_STREAMS lets that many
            // streams sit full and the rest still flow.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(STREAM_WINDOW * CONNECTION_STREAMS)
            .tcp_nodelay(true)
            // A stopped or wedged worker keeps its TCP connection open, and
            // nothing on it answers: the PING's deadline closes it, so its
            // turns fail over (before their first frame) within about
            // interval + timeout instead of waiting out their own deadlines.
            // Not while idle: gRPC C-core servers (the Python fleet) count
            // PINGs on a connection without calls as abuse; ours always
            // carry the health Watch.
            .http2_keep_alive_interval(settings.keepalive_interval)
            .keep_alive_timeout(settings.keepalive_timeout)
            .keep_alive_while_idle(false)
            .connect()
            .await
    }

    /// Follows readiness and load on a connected channel; returns why it stopped.
    async fn follow(&self, channel: Channel, settings: &EndpointSettings) -> String {
        // Load first, so the first selection already knows it.
        if let Err(status) = self.poll_load(&channel, settings).await {
            tracing::debug!(endpoint = %self.address, %status, "first load poll failed");
        }
        let mut health = HealthClient::new(channel.clone());
        let mut service = self.kind.service_name();
        loop {
            let opened = self.unless_silent(
                health.watch(HealthCheckRequest {
                    service: service.to_string(),
                }),
                settings,
                "no answer to the health Watch",
            );
            let mut watch = match opened.await {
                Ok(stream) => stream.into_inner(),
                Err(status) if status.code() == Code::Unimplemented => {
                    // The existing Python fleet has no health service.
                    self.set_probe(true);
                    return self.probe_loop(&channel, settings).await;
                }
                Err(status) => return format!("health watch failed: {status}"),
            };
            self.set_probe(false);
            let poll = self.poll_loop(&channel, settings);
            tokio::pin!(poll);
            let mut first = true;
            loop {
                let update = if first {
                    // Watch sends the current status at once: silence here
                    // is a worker that does not answer.
                    first = false;
                    let next = self.unless_silent(watch.next(), settings, "no first health status");
                    tokio::select! {
                        update = next => update,
                        reason = &mut poll => return reason,
                    }
                } else {
                    tokio::select! {
                        update = watch.next() => update,
                        reason = &mut poll => return reason,
                    }
                };
                match update {
                    Some(Ok(update)) => {
                        let status = ServingStatus::try_from(update.status)
                            .unwrap_or(ServingStatus::Unknown);
                        match status {
                            ServingStatus::Serving => self.set_state(EndpointState::Serving),
                            ServingStatus::ServiceUnknown if !service.is_empty() => {
                                // Health served, but not per service: follow the overall status.
                                service = "";
                                break;
                            }
                            _ => self.set_state(EndpointState::NotServing),
                        }
                    }
                    Some(Err(status)) => return format!("health watch ended: {status}"),
                    None => return "health watch closed".to_string(),
                }
            }
        }
    }

    /// Awaits `answer`; marks the endpoint UNRESPONSIVE if it takes longer
    /// than `--load-poll-timeout-ms`, and keeps waiting (the answer, when it
    /// comes, says what the worker is; a poll answered clears the mark).
    async fn unless_silent<T>(
        &self,
        answer: impl std::future::Future<Output = T>,
        settings: &EndpointSettings,
        why: &str,
    ) -> T {
        tokio::pin!(answer);
        match tokio::time::timeout(settings.load_poll_timeout, &mut answer).await {
            Ok(value) => value,
            Err(_) => {
                self.mark_unresponsive(&format!("{why} within {:?}", settings.load_poll_timeout));
                answer.await
            }
        }
    }

    /// Polls load while the health stream decides readiness. Returns only
    /// when the worker stops answering at the transport level.
    async fn poll_loop(&self, channel: &Channel, settings: &EndpointSettings) -> String {
        let mut tick = tokio::time::interval(settings.load_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(status) = self.poll_load(channel, settings).await {
                if status.code() == Code::Unavailable {
                    return format!("load poll: {status}");
                }
                tracing::debug!(endpoint = %self.address, %status, "load poll failed");
            }
        }
    }

    /// Readiness by GetCapabilities for workers without grpc.health.v1: an
    /// answer means SERVING, a transport failure ends the connection.
    async fn probe_loop(&self, channel: &Channel, settings: &EndpointSettings) -> String {
        let mut tick = tokio::time::interval(settings.load_poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.poll_load(channel, settings).await {
                Ok(()) => self.set_state(EndpointState::Serving),
                Err(status) if status.code() == Code::Unavailable => {
                    return format!("capabilities probe: {status}")
                }
                Err(status) if status.code() == Code::DeadlineExceeded => {}
                Err(status) => {
                    tracing::debug!(endpoint = %self.address, %status, "capabilities probe failed");
                    self.set_state(EndpointState::NotServing);
                }
            }
        }
    }

    async fn poll_load(
        &self,
        channel: &Channel,
        settings: &EndpointSettings,
    ) -> Result<(), Status> {
        // The deadline is kept here, not only sent: tonic reports its own
        // client-side timeout as CANCELLED ("Timeout expired"), which reads
        // like a call the orchestrator gave up on, not like a silent worker.
        // The header asks a bit more, so this one always fires first.
        let header = settings.load_poll_timeout + settings.load_poll_timeout / 2;
        let call = async {
            match self.kind {
                Kind::Tts => {
                    let mut request = Request::new(tts::GetCapabilitiesRequest {});
                    request.set_timeout(header);
                    tts::tts_service_client::TtsServiceClient::new(channel.clone())
                        .get_capabilities(request)
                        .await
                        .map(|r| r.into_inner().metrics)
                }
                Kind::Stt => {
                    let mut request = Request::new(stt::GetCapabilitiesRequest {});
                    request.set_timeout(header);
                    stt::stt_service_client::SttServiceClient::new(channel.clone())
                        .get_capabilities(request)
                        .await
                        .map(|r| r.into_inner().metrics)
                }
            }
        };
        let answer = tokio::time::timeout(settings.load_poll_timeout, call)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(
                    "no answer to GetCapabilities in time",
                ))
            });
        // Any answer, even an error status, shows the process is alive; only
        // silence past the deadline makes it unresponsive.
        let metrics = match answer {
            Ok(metrics) => metrics,
            Err(status) => {
                match status.code() {
                    Code::DeadlineExceeded => self.mark_unresponsive(&format!(
                        "no answer to GetCapabilities within {:?}",
                        settings.load_poll_timeout
                    )),
                    Code::Unavailable | Code::Cancelled | Code::Unknown => {}
                    _ => self.mark_responsive(),
                }
                return Err(status);
            }
        };
        self.mark_responsive();
        self.set_load(ReportedLoad::from_metrics(&metrics));
        Ok(())
    }
}
