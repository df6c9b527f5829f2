//! What every case shares: the connection, unique session ids, deadlines, and
//! the cases both services have in common (health, capabilities).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use voxwire_proto::metrics;
use voxwire_proto::stt::stt_service_client::SttServiceClient;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{EndSessionRequest, StartSessionRequest};

use crate::outcome::{ensure, pass, pass_with, CaseResult, Failure};
use crate::target::{DrainTrigger, Service};

/// A call that should answer at once (unary calls, status codes, health).
pub(crate) const PROMPT: Duration = Duration::from_secs(5);
/// A whole streaming call on generated input.
pub(crate) const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// The flow-control window of each stream this client reads. Small on
/// purpose: a worker that outpaces its reader must block on it within about
/// 30 frames, so STOP, PAUSE and cancellation meet a synthesis still running
/// rather than one already sitting whole in the client's buffers.
const STREAM_WINDOW: u32 = 64 * 1024;

/// Connects lazily: an unreachable target fails the cases that use it, each
/// with the transport error, rather than the run.
pub fn channel(target: &str) -> Result<Channel, tonic::transport::Error> {
    channel_with(target, None)
}

/// [`channel`], over TLS when `tls` is given (`https://`).
pub fn channel_with(
    target: &str,
    tls: Option<&voxwire_service::tls::ClientTls>,
) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint_with(target, tls)?.connect_lazy())
}

/// The endpoint [`channel_with`] connects to, for a caller that wants to
/// connect now and learn whether the target is there at all.
pub fn endpoint_with(
    target: &str,
    tls: Option<&voxwire_service::tls::ClientTls>,
) -> Result<Endpoint, tonic::transport::Error> {
    let authority = target.split_once("://").map_or(target, |(_, rest)| rest);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{authority}"))?;
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.config())?;
    }
    Ok(endpoint
        .connect_timeout(PROMPT)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(16 * STREAM_WINDOW))
}

/// Everything a case needs, cheap to clone into spawned tasks.
#[derive(Clone)]
pub(crate) struct Ctx {
    inner: Arc<Inner>,
}

struct Inner {
    channel: Channel,
    case_id: &'static str,
    seed: u64,
    cases: u32,
    nonce: String,
    next_id: AtomicU64,
    drain: Option<DrainTrigger>,
    /// How long a property may go on drawing new inputs (`None`: all of
    /// them): a slow honest worker gets fewer inputs, not a failure.
    input_budget: Option<Duration>,
    /// Set when the case is over (its deadline passed): a property stops.
    cancelled: tokio::sync::watch::Sender<bool>,
    /// TTS sessions the case opened and has not ended: ended for it when
    /// the case is stopped at its deadline, so they do not fill the worker
    /// for the cases after it.
    open_sessions: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl Ctx {
    pub(crate) fn new(
        channel: Channel,
        case_id: &'static str,
        seed: u64,
        cases: u32,
        drain: Option<DrainTrigger>,
        input_budget: Option<Duration>,
    ) -> Ctx {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Ctx {
            inner: Arc::new(Inner {
                channel,
                case_id,
                seed,
                cases,
                nonce: format!("{:x}{:x}", std::process::id(), nanos),
                next_id: AtomicU64::new(1),
                drain,
                input_budget,
                cancelled: tokio::sync::watch::channel(false).0,
                open_sessions: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            }),
        }
    }

    /// Ends the case: see [`Ctx::cancelled`].
    pub(crate) fn cancel(&self) {
        self.inner.cancelled.send_replace(true);
    }

    /// Resolves once the case is over (its deadline passed, or it ended).
    pub(crate) async fn cancelled(&self) {
        let mut cancelled = self.inner.cancelled.subscribe();
        // The sender lives in `inner`, which this borrow keeps alive.
        let _ = cancelled.wait_for(|c| *c).await;
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeSet<String>> {
        self.inner
            .open_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A session this case opened (see [`Ctx::end_open_sessions`]).
    pub(crate) fn track_session(&self, id: &str) {
        self.sessions().insert(id.to_string());
    }

    /// Ends, best effort and all at once within [`PROMPT`], the sessions
    /// the case left open (it was stopped before its own clean-up).
    pub(crate) async fn end_open_sessions(&self) {
        let ids: Vec<String> = std::mem::take(&mut *self.sessions()).into_iter().collect();
        let mut ends = tokio::task::JoinSet::new();
        for session_id in ids {
            let mut client = self.tts();
            ends.spawn(async move {
                let _ = client.end_session(EndSessionRequest { session_id }).await;
            });
        }
        // Dropping the set cancels what has not answered by then.
        let _ =
            tokio::time::timeout(PROMPT, async { while ends.join_next().await.is_some() {} }).await;
    }

    pub(crate) fn input_budget(&self) -> Option<Duration> {
        self.inner.input_budget
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        *self.inner.cancelled.borrow()
    }

    pub(crate) fn case_id(&self) -> &'static str {
        self.inner.case_id
    }

    pub(crate) fn seed(&self) -> u64 {
        self.inner.seed
    }

    pub(crate) fn cases(&self) -> u32 {
        self.inner.cases
    }

    /// A session id no other run or case uses, so the suite can share a
    /// worker with live traffic.
    pub(crate) fn session_id(&self) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let tail = self.inner.case_id.rsplit('/').next().unwrap_or("case");
        format!("conf-{}-{tail}-{n}", self.inner.nonce)
    }

    pub(crate) fn drain_trigger(&self) -> Option<&DrainTrigger> {
        self.inner.drain.as_ref()
    }

    pub(crate) fn tts(&self) -> TtsServiceClient<Channel> {
        TtsServiceClient::new(self.inner.channel.clone())
    }

    pub(crate) fn stt(&self) -> SttServiceClient<Channel> {
        SttServiceClient::new(self.inner.channel.clone())
    }

    pub(crate) fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.inner.channel.clone())
    }
}

pub(crate) fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Awaits a unary call with [`PROMPT`] as its deadline.
pub(crate) async fn prompt<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<Result<T, tonic::Status>, Failure> {
    match tokio::time::timeout(PROMPT, call).await {
        Ok(result) => Ok(result.map(tonic::Response::into_inner)),
        Err(_) => Err(Failure::new(
            format!("{what} to answer within {} s", PROMPT.as_secs()),
            "no answer (the call hangs)",
        )),
    }
}

/// Awaits a unary call that must succeed.
pub(crate) async fn must_ok<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Failure> {
    prompt(what, call)
        .await?
        .map_err(|status| Failure::new(format!("{what} to succeed"), status_text(&status)))
}

/// Checks that a call failed with `code`.
pub(crate) fn expect_code<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, tonic::Status>,
    code: tonic::Code,
) -> Result<(), Failure> {
    match result {
        Err(status) if status.code() == code => Ok(()),
        Err(status) => Err(Failure::new(
            format!("{what} to fail {code:?}"),
            status_text(&status),
        )),
        Ok(answer) => Err(Failure::new(
            format!("{what} to fail {code:?}"),
            format!("success: {answer:?}"),
        )),
    }
}

pub(crate) async fn start_tts_session(ctx: &Ctx, id: &str) -> Result<(), Failure> {
    ctx.track_session(id);
    must_ok(
        &format!("StartSession({id:?})"),
        ctx.tts().start_session(StartSessionRequest {
            session_id: id.to_string(),
            ..Default::default()
        }),
    )
    .await
    .map(drop)
}

/// Ends a session the case opened. Best effort: the case's verdict is already
/// made, and a worker that fails EndSession fails tts/session/end-idempotent.
pub(crate) async fn end_tts_session(ctx: &Ctx, id: &str) {
    ctx.sessions().remove(id);
    let _ = tokio::time::timeout(
        PROMPT,
        ctx.tts().end_session(EndSessionRequest {
            session_id: id.to_string(),
        }),
    )
    .await;
}

/// The live load a service reports.
pub(crate) async fn load_metrics(
    ctx: &Ctx,
    service: Service,
) -> Result<(HashMap<String, f64>, i32), Failure> {
    match service {
        Service::Tts => {
            let caps = must_ok(
                "GetCapabilities",
                ctx.tts()
                    .get_capabilities(voxwire_proto::tts::GetCapabilitiesRequest {}),
            )
            .await?;
            let max = caps.capabilities.map_or(0, |c| c.max_concurrent_sessions);
            Ok((caps.metrics, max))
        }
        Service::Stt => {
            let caps = must_ok(
                "GetCapabilities",
                ctx.stt()
                    .get_capabilities(voxwire_proto::stt::GetCapabilitiesRequest {}),
            )
            .await?;
            let max = caps.capabilities.map_or(0, |c| c.max_concurrent_sessions);
            Ok((caps.metrics, max))
        }
    }
}

fn serving_name(status: i32) -> String {
    ServingStatus::try_from(status)
        .map_or_else(|_| format!("status {status}"), |s| format!("{s:?}"))
}

fn names(service: Service) -> [&'static str; 2] {
    ["", service.grpc_name()]
}

pub(crate) async fn health_check(ctx: Ctx, service: Service) -> CaseResult {
    for name in names(service) {
        let answer = prompt(
            "health Check",
            ctx.health().check(HealthCheckRequest {
                service: name.to_string(),
            }),
        )
        .await?;
        match answer {
            Ok(response) => ensure(
                response.status == ServingStatus::Serving as i32,
                format!("Check({name:?}) to answer SERVING"),
                serving_name(response.status),
            )?,
            Err(status) => {
                return Err(Failure::new(
                    format!("Check({name:?}) to answer SERVING"),
                    status_text(&status),
                ))
            }
        }
    }
    pass()
}

/// How long a Watch stream must stay open after its first update: a server
/// that answers Watch like Check (one message, then end of stream) ends at once.
const WATCH_HOLD: Duration = Duration::from_millis(500);

pub(crate) async fn health_watch(ctx: Ctx, service: Service) -> CaseResult {
    for name in names(service) {
        let expected = format!("Watch({name:?}) to send SERVING at once and stay open");
        let mut stream = prompt(
            "health Watch",
            ctx.health().watch(HealthCheckRequest {
                service: name.to_string(),
            }),
        )
        .await?
        .map_err(|status| Failure::new(&expected, status_text(&status)))?;
        let first = tokio::time::timeout(PROMPT, stream.next())
            .await
            .map_err(|_| Failure::new(&expected, "no first update within 5 s"))?;
        match first {
            Some(Ok(update)) => ensure(
                update.status == ServingStatus::Serving as i32,
                &expected,
                format!("first update {}", serving_name(update.status)),
            )?,
            Some(Err(status)) => return Err(Failure::new(&expected, status_text(&status))),
            None => return Err(Failure::new(&expected, "the stream ended with no update")),
        }
        match tokio::time::timeout(WATCH_HOLD, stream.next()).await {
            // Still open: what a streaming Watch does while nothing changes.
            Err(_) => {}
            // A change arrived: streaming, as it should.
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(status))) => {
                return Err(Failure::new(
                    &expected,
                    format!("after the first update: {}", status_text(&status)),
                ))
            }
            Ok(None) => {
                return Err(Failure::new(
                    &expected,
                    "the stream ended after the first update, so changes would never be sent",
                ))
            }
        }
    }
    pass()
}

pub(crate) async fn health_unknown(ctx: Ctx) -> CaseResult {
    let name = "voxwire.conformance.NoSuchService";
    let answer = prompt(
        "health Check",
        ctx.health().check(HealthCheckRequest {
            service: name.to_string(),
        }),
    )
    .await?;
    expect_code(&format!("Check({name:?})"), answer, tonic::Code::NotFound)?;
    // Watch must not end the call: a prober watching a name the server
    // does not serve yet is told SERVICE_UNKNOWN and kept informed.
    let expected = format!("Watch({name:?}) to send SERVICE_UNKNOWN and stay open");
    let mut stream = prompt(
        "health Watch",
        ctx.health().watch(HealthCheckRequest {
            service: name.to_string(),
        }),
    )
    .await?
    .map_err(|status| Failure::new(&expected, status_text(&status)))?;
    match tokio::time::timeout(PROMPT, stream.next()).await {
        Err(_) => return Err(Failure::new(&expected, "no first update within 5 s")),
        Ok(None) => return Err(Failure::new(&expected, "the stream ended with no update")),
        Ok(Some(Err(status))) => return Err(Failure::new(&expected, status_text(&status))),
        Ok(Some(Ok(update))) => ensure(
            update.status == ServingStatus::ServiceUnknown as i32,
            &expected,
            format!("first update {}", serving_name(update.status)),
        )?,
    }
    if let Ok(None) = tokio::time::timeout(WATCH_HOLD, stream.next()).await {
        return Err(Failure::new(
            &expected,
            "the stream ended after SERVICE_UNKNOWN",
        ));
    }
    pass()
}

pub(crate) async fn caps_metrics(ctx: Ctx, service: Service) -> CaseResult {
    let (before, max) = load_metrics(&ctx, service).await?;
    let wanted = [
        metrics::ACTIVE_SESSIONS,
        metrics::ACTIVE_STREAMS,
        metrics::MAX_SESSIONS,
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|key| !before.contains_key(*key))
        .collect();
    ensure(
        missing.is_empty(),
        format!("metrics keys {wanted:?}"),
        format!(
            "missing {missing:?} (reported: {:?})",
            before.keys().collect::<Vec<_>>()
        ),
    )?;
    let reported = before
        .get(metrics::MAX_SESSIONS)
        .copied()
        .unwrap_or_default();
    ensure(
        max > 0 && (reported - f64::from(max)).abs() < 0.5,
        "max_sessions metric equal to Capabilities.max_concurrent_sessions (> 0)",
        format!("max_sessions {reported}, max_concurrent_sessions {max}"),
    )?;
    if service == Service::Stt {
        return pass();
    }
    let id = ctx.session_id();
    start_tts_session(&ctx, &id).await?;
    let during = load_metrics(&ctx, service).await;
    end_tts_session(&ctx, &id).await;
    let (during, _) = during?;
    let (after, _) = load_metrics(&ctx, service).await?;
    let active =
        |m: &HashMap<String, f64>| m.get(metrics::ACTIVE_SESSIONS).copied().unwrap_or(-1.0);
    let (b, d, a) = (active(&before), active(&during), active(&after));
    if (d - b - 1.0).abs() > 0.5 || (a - b).abs() > 0.5 {
        // Other clients may share the worker: only a count that did not move
        // at all is conclusive.
        ensure(
            d > b || d > a,
            "active_sessions to count the session the suite opened",
            format!("before {b}, with one more session {d}, after ending it {a}"),
        )?;
        return pass_with(format!(
            "active_sessions {b} -> {d} -> {a} (shared worker?)"
        ));
    }
    pass()
}

/// How long a drained worker may take to say NOT_SERVING.
const DRAIN_NOTICE: Duration = Duration::from_secs(5);

/// Opens a Watch on the service (it must say SERVING first), runs `busy` to
/// put work in flight, fires the drain, and waits for NOT_SERVING. Returns
/// what `busy` returned. `None`: there is no drain trigger.
pub(crate) async fn drain_to_not_serving<T>(
    ctx: &Ctx,
    service: Service,
    busy: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<Option<T>, Failure> {
    let Some(trigger) = ctx.drain_trigger() else {
        return Ok(None);
    };
    let expected = "NOT_SERVING on the Watch stream once draining";
    let mut watch = prompt(
        "health Watch",
        ctx.health().watch(HealthCheckRequest {
            service: service.grpc_name().to_string(),
        }),
    )
    .await?
    .map_err(|status| Failure::new(expected, status_text(&status)))?;
    let in_flight = busy.await?;
    trigger.fire();
    let changed = tokio::time::timeout(DRAIN_NOTICE, async {
        while let Some(update) = watch.next().await {
            match update {
                Ok(u) if u.status == ServingStatus::NotServing as i32 => return Ok(()),
                Ok(_) => {}
                Err(status) => return Err(status_text(&status)),
            }
        }
        Err("the Watch stream ended without NOT_SERVING".to_string())
    })
    .await;
    match changed {
        Ok(Ok(())) => Ok(Some(in_flight)),
        Ok(Err(actual)) => Err(Failure::new(expected, actual)),
        Err(_) => Err(Failure::new(
            expected,
            format!("still no NOT_SERVING {DRAIN_NOTICE:?} after the drain began"),
        )),
    }
}

/// Skip reason for the drain cases when the suite did not start the worker.
pub(crate) const NO_DRAIN: &str =
    "needs the worker started by the suite (conformance tts|stt --target ADDR -- CMD): it is drained at the end";
