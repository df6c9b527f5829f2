//! One TTS turn: pick a worker, make sure the client's session is open on
//! it, run one Synthesize, validate and forward the frames. Retries what
//! may succeed elsewhere, and only before the first frame was forwarded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Code, Request, Status};
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{AudioFrame, EndSessionRequest, StartSessionRequest, TextChunk};
use voxwire_proto::tts_stream::TtsStreamValidator;

use crate::config::DispatchSettings;
use crate::endpoint::Endpoint;
use crate::metrics::{self, Metrics};
use crate::pool::{Lease, Pool};
use crate::retry::{
    first_answer, is_retryable, lost_worker_as_unavailable, run_turn, Failed, Turn,
};
use crate::trace::TraceContext;

/// One TTS turn as a [`Turn`]: preferring the worker its session is on,
/// retried only before a frame was forwarded.
struct SpeakTurn<'d, 'b, 'f> {
    dispatcher: &'d TtsDispatcher,
    binding: &'b mut TtsBinding,
    feed: &'b mut TextFeed<'f>,
    trace: &'d TraceContext,
    out: &'d mpsc::Sender<AudioFrame>,
    started: Instant,
}

impl Turn for SpeakTurn<'_, '_, '_> {
    type Done = u64;

    fn preferred(&self) -> Option<String> {
        self.binding
            .endpoint
            .clone()
            .or_else(|| self.binding.preferred.clone())
    }

    async fn attempt(&mut self, lease: &Lease) -> Result<u64, Failed> {
        let result = self
            .dispatcher
            .attempt(
                lease,
                self.binding,
                self.feed,
                self.trace,
                self.out,
                self.started,
            )
            .await;
        let error = match result {
            Ok(frames) => return Ok(frames),
            Err(error) => error,
        };
        if self.feed.client_failed || error.client {
            // The client broke or abandoned its input.
            return Err(Failed {
                status: error.status,
                committed: true,
                client: true,
            });
        }
        if error.forwarded == 0
            || matches!(error.status.code(), Code::Internal | Code::InvalidArgument)
        {
            return Err(Failed {
                committed: error.forwarded > 0,
                ..Failed::retryable(error.status)
            });
        }
        // Frames reached the client, so the turn ends here. A transport
        // failure mid-stream (h2 reset, connection lost) surfaces as
        // UNKNOWN; it means the worker went away.
        let code = match error.status.code() {
            _ if self.out.is_closed() => Code::Cancelled,
            Code::Unknown | Code::Cancelled => Code::Unavailable,
            other => other,
        };
        let status = Status::new(
            code,
            format!(
                "worker {} failed after {} frames: {}",
                lease.endpoint.address,
                error.forwarded,
                error.status.message()
            ),
        );
        Err(Failed {
            status,
            committed: true,
            client: false,
        })
    }

    fn retrying(&mut self, code: Code) {
        if code == Code::Unavailable {
            // The session there is likely gone with the worker.
            self.binding.set_endpoint(None);
            self.binding.preferred = None;
        }
    }
}

/// The client session's presence on a worker.
#[derive(Debug, Clone, Default)]
pub struct TtsBinding {
    /// The id used on the worker (the client's session id).
    pub session_id: String,
    pub model_id: String,
    pub options: HashMap<String, String>,
    /// The worker the session is open on, if any.
    pub endpoint: Option<String>,
    /// The worker a closed session was last open on: its next turn goes
    /// there again when it can.
    pub preferred: Option<String>,
    /// A copy of `endpoint` readable while a turn holds the binding (Control).
    pub published: Arc<std::sync::Mutex<Option<String>>>,
}

impl TtsBinding {
    fn set_endpoint(&mut self, endpoint: Option<String>) -> Option<String> {
        *self.published.lock().unwrap_or_else(|e| e.into_inner()) = endpoint.clone();
        std::mem::replace(&mut self.endpoint, endpoint)
    }
}

#[derive(Debug, Clone)]
pub struct TurnStats {
    pub endpoint: String,
    pub attempts: u32,
    pub frames: u64,
}

/// The text of one turn: the chunks received so far (replayed on a retry)
/// and, for a relayed Synthesize, the rest still arriving from the client.
pub struct TextFeed<'a> {
    sent: Vec<TextChunk>,
    rest: Option<&'a mut mpsc::Receiver<Result<TextChunk, Status>>>,
    /// The client broke the stream (e.g. TTS-CHUNK-SESSION).
    error: Option<Status>,
    /// The client's input failed (the error above, once taken): the turn's
    /// failure is the client's, not the worker's.
    client_failed: bool,
    /// When the input became complete: a worker's first-frame deadline runs
    /// from here (or from its attempt's start, if later).
    completed_at: Option<Instant>,
}

impl<'a> TextFeed<'a> {
    /// A whole text: one chunk with is_final.
    pub fn whole(session_id: &str, text: &str) -> TextFeed<'static> {
        TextFeed {
            sent: vec![TextChunk {
                session_id: session_id.to_string(),
                text: text.to_string(),
                is_final: true,
                sequence_number: 1,
            }],
            rest: None,
            error: None,
            client_failed: false,
            completed_at: Some(Instant::now()),
        }
    }

    /// `first`, then whatever arrives on `rest` until a chunk with is_final
    /// or the end of `rest` (the client's half-close).
    pub fn streaming(
        first: TextChunk,
        rest: &'a mut mpsc::Receiver<Result<TextChunk, Status>>,
    ) -> TextFeed<'a> {
        let complete = first.is_final;
        TextFeed {
            sent: vec![first],
            rest: (!complete).then_some(rest),
            error: None,
            client_failed: false,
            completed_at: complete.then(Instant::now),
        }
    }

    fn complete(&self) -> bool {
        self.rest.is_none()
    }

    /// The next chunk from the client; `None` once the input is complete.
    async fn next(&mut self) -> Option<TextChunk> {
        let rest = self.rest.as_mut()?;
        let next = rest.recv().await;
        if !matches!(&next, Some(Ok(chunk)) if !chunk.is_final) {
            self.completed_at = Some(Instant::now());
        }
        match next {
            Some(Ok(chunk)) => {
                if chunk.is_final {
                    self.rest = None;
                }
                self.sent.push(chunk.clone());
                Some(chunk)
            }
            Some(Err(status)) => {
                self.rest = None;
                self.error = Some(status);
                self.client_failed = true;
                None
            }
            None => {
                self.rest = None;
                None
            }
        }
    }
}

/// The deadline of an attempt's first frame: `soft`, from what the worker
/// usually takes, then, when no other worker could take the attempt, `hard`
/// (--first-frame-timeout-ms). Both run from the end of input, or from the
/// attempt's start when it began later.
struct FirstFrame {
    started: Instant,
    soft: Duration,
    hard: Duration,
    soft_passed: bool,
}

impl FirstFrame {
    /// When the wait for the first frame ends; `None` while the input is
    /// still open (the worker may rightly be waiting for more text).
    fn deadline(&self, feed: &TextFeed<'_>) -> Option<tokio::time::Instant> {
        let from = feed.completed_at?.max(self.started);
        let wait = if self.soft_passed {
            self.hard
        } else {
            self.soft
        };
        Some(tokio::time::Instant::from_std(from + wait))
    }

    /// The deadline passed. True: the attempt ends now. False: no other
    /// worker could take it, so it waits on, to the hard deadline.
    fn expired(&mut self, elsewhere: bool) -> bool {
        if self.soft_passed || elsewhere || self.hard <= self.soft {
            return true;
        }
        self.soft_passed = true;
        false
    }

    fn waited(&self) -> Duration {
        if self.soft_passed {
            self.hard
        } else {
            self.soft
        }
    }

    /// How long the first frame took, if it came after the input was
    /// complete (a worker streaming early says nothing about its latency).
    fn latency(&self, feed: &TextFeed<'_>) -> Option<Duration> {
        let from = feed.completed_at?.max(self.started);
        Instant::now().checked_duration_since(from)
    }
}

/// Why one attempt failed, and whether the client already saw output.
struct AttemptError {
    status: Status,
    forwarded: u64,
    /// The client's doing (it stopped reading): no blame, no retry.
    client: bool,
}

impl From<Status> for AttemptError {
    fn from(status: Status) -> Self {
        AttemptError {
            status: lost_worker_as_unavailable(status),
            forwarded: 0,
            client: false,
        }
    }
}

pub struct TtsDispatcher {
    pool: Arc<Pool>,
    settings: DispatchSettings,
    metrics: Arc<Metrics>,
}

impl TtsDispatcher {
    pub fn new(pool: Arc<Pool>, settings: DispatchSettings, metrics: Arc<Metrics>) -> Self {
        TtsDispatcher {
            pool,
            settings,
            metrics,
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// How long `endpoint` may take to give an attempt's first answer before
    /// the attempt moves elsewhere (see [`crate::config::AttemptDeadline`]).
    fn attempt_deadline(&self, endpoint: &Endpoint) -> Duration {
        self.settings
            .attempt_deadline
            .for_p95(self.pool.first_answer_p95(endpoint))
    }

    /// Speaks `text` as one turn, sending frames (session id set to the
    /// client's) to `out`. The frames sent always form a valid stream up to
    /// the point of an error.
    pub async fn speak(
        &self,
        binding: &mut TtsBinding,
        text: &str,
        trace: &TraceContext,
        out: &mpsc::Sender<AudioFrame>,
    ) -> Result<TurnStats, Status> {
        let mut feed = TextFeed::whole(&binding.session_id, text);
        self.speak_feed(binding, &mut feed, trace, out).await
    }

    /// Like [`TtsDispatcher::speak`] with text that may still be arriving:
    /// chunks go to the worker as they come (a worker that starts early
    /// answers early), and a retry replays the ones sent.
    pub async fn speak_feed(
        &self,
        binding: &mut TtsBinding,
        feed: &mut TextFeed<'_>,
        trace: &TraceContext,
        out: &mpsc::Sender<AudioFrame>,
    ) -> Result<TurnStats, Status> {
        let mut turn = SpeakTurn {
            dispatcher: self,
            binding,
            feed,
            trace,
            out,
            started: Instant::now(),
        };
        let attempted =
            run_turn("tts", &self.pool, &self.settings, &self.metrics, &mut turn).await?;
        Ok(TurnStats {
            endpoint: attempted.endpoint,
            attempts: attempted.attempts,
            frames: attempted.done,
        })
    }

    /// Opens the client session on a worker now (tts.TTSService StartSession
    /// relay), so an unknown model fails at StartSession as with a worker.
    pub async fn open_session(
        &self,
        binding: &mut TtsBinding,
        trace: &TraceContext,
    ) -> Result<(), Status> {
        let mut tried = Vec::new();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let lease = self
                .pool
                .acquire_ignoring_load(&tried, self.settings.ready_wait)
                .await?;
            let bound = self.bind(&lease, binding, trace).await;
            if let Err(status) = &bound {
                if status.code() == Code::DeadlineExceeded {
                    lease.endpoint.mark_unresponsive(status.message());
                }
            }
            match bound {
                Ok(_) => return Ok(()),
                Err(status)
                    if is_retryable(status.code()) && self.settings.retry.allows_after(attempt) =>
                {
                    tracing::warn!(endpoint = %lease.endpoint.address, attempt, %status, "StartSession failed; trying another worker");
                    tried.push(lease.endpoint.address.clone());
                    drop(lease);
                    tokio::time::sleep(self.settings.retry.delay(attempt)).await;
                }
                Err(status) => return Err(status),
            }
        }
    }

    /// Ends the session on its worker, if it is open on one. Best effort:
    /// EndSession is idempotent and the worker also reaps idle sessions.
    pub async fn close_session(&self, binding: &mut TtsBinding) {
        if let Some(address) = binding.set_endpoint(None) {
            self.end_on(&address, &binding.session_id).await;
        }
    }

    /// Ends the session on its worker like [`TtsDispatcher::close_session`],
    /// remembering the worker for the session's next turn.
    pub async fn release_session(&self, binding: &mut TtsBinding) {
        if let Some(address) = binding.set_endpoint(None) {
            self.end_on(&address, &binding.session_id).await;
            binding.preferred = Some(address);
        }
    }

    async fn end_on(&self, address: &str, session_id: &str) {
        if let Some(call) = self.end_session_call(address, session_id) {
            call.await;
        }
    }

    /// EndSession on a worker the session left, without waiting for it.
    fn end_in_background(&self, address: &str, session_id: &str) {
        if let Some(call) = self.end_session_call(address, session_id) {
            tokio::spawn(call);
        }
    }

    /// The EndSession call (bounded by the call timeout; a failure is only
    /// logged: the worker reaps idle sessions itself), or None when the
    /// endpoint has no channel.
    fn end_session_call(
        &self,
        address: &str,
        session_id: &str,
    ) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let channel = self.pool.endpoint(address).and_then(|e| e.channel())?;
        let mut request = Request::new(EndSessionRequest {
            session_id: session_id.to_string(),
        });
        request.set_timeout(self.settings.call_timeout);
        let address = address.to_string();
        Some(async move {
            if let Err(status) = TtsServiceClient::new(channel).end_session(request).await {
                tracing::debug!(endpoint = %address, %status, "EndSession failed");
            }
        })
    }

    /// Makes sure the session is open on the lease's worker: StartSession
    /// when the session moves (ending it on the previous worker). True when
    /// it was opened just now.
    async fn bind(
        &self,
        lease: &Lease,
        binding: &mut TtsBinding,
        trace: &TraceContext,
    ) -> Result<bool, Status> {
        let address = &lease.endpoint.address;
        if binding.endpoint.as_deref() == Some(address.as_str()) {
            return Ok(false);
        }
        if let Some(previous) = binding.set_endpoint(None) {
            // In the background: the session is moving because that worker
            // failed, and a wedged worker would hold this turn for the whole
            // EndSession deadline.
            self.end_in_background(&previous, &binding.session_id);
        }
        let mut client = TtsServiceClient::new(lease.channel.clone());
        let start = || {
            let mut request = Request::new(StartSessionRequest {
                session_id: binding.session_id.clone(),
                model_id: binding.model_id.clone(),
                options: binding.options.clone(),
            });
            // A little past the deadline kept below, which so fires first:
            // tonic reports its own timeout as CANCELLED, not retryable.
            request.set_timeout(self.settings.call_timeout + self.settings.call_timeout / 4);
            trace.inject(request.metadata_mut());
            request
        };
        // A stopped worker never answers: past what it usually takes, the
        // session goes to another worker instead of waiting the call out.
        let answer = first_answer(
            client.start_session(start()),
            self.attempt_deadline(&lease.endpoint)
                .min(self.settings.call_timeout),
            self.settings.call_timeout,
            || self.pool.has_alternative(address),
        )
        .await
        .map_err(|waited| {
            Status::deadline_exceeded(format!(
                "worker {address} did not answer StartSession within {waited:?}"
            ))
        })?;
        match answer {
            Ok(_) => {}
            Err(status) if status.code() == Code::AlreadyExists => {
                // Left over from an earlier binding to this worker: start afresh.
                let mut end = Request::new(EndSessionRequest {
                    session_id: binding.session_id.clone(),
                });
                end.set_timeout(self.settings.call_timeout);
                client.end_session(end).await?;
                client.start_session(start()).await?;
            }
            Err(status) => return Err(status),
        }
        binding.set_endpoint(Some(address.clone()));
        Ok(true)
    }

    async fn attempt(
        &self,
        lease: &Lease,
        binding: &mut TtsBinding,
        feed: &mut TextFeed<'_>,
        trace: &TraceContext,
        out: &mpsc::Sender<AudioFrame>,
        started: Instant,
    ) -> Result<u64, AttemptError> {
        let attempt_started = Instant::now();
        let fresh = self.bind(lease, binding, trace).await?;
        let address = &lease.endpoint.address;
        let session_id = binding.session_id.clone();
        let mut first = FirstFrame {
            started: attempt_started,
            soft: self
                .attempt_deadline(&lease.endpoint)
                .min(self.settings.first_frame_timeout),
            hard: self.settings.first_frame_timeout,
            soft_passed: false,
        };
        let (mut frames, mut input) = match self
            .open_synthesize(lease, feed, trace, &mut first)
            .await
        {
            Err(status) if status.code() == Code::NotFound && !fresh => {
                // The worker forgot a session opened earlier (idle reaping, a
                // restart): open it there again, once. Not a retry of a call
                // that failed on its merits: the orchestrator's view was stale.
                tracing::info!(endpoint = %address, session = %session_id, "re-opening session");
                binding.set_endpoint(None);
                self.bind(lease, binding, trace).await?;
                self.open_synthesize(lease, feed, trace, &mut first).await?
            }
            other => other?,
        };
        let mut validator = TtsStreamValidator::new(session_id);
        let mut forwarded = 0u64;
        let mut last_audio: Option<Instant> = None;
        loop {
            let fail = |status: Status| AttemptError {
                status: lost_worker_as_unavailable(status),
                forwarded,
                client: false,
            };
            // Frame deadlines run once the input is complete: until then the
            // worker may rightly be waiting for more text.
            let deadline = match (feed.complete(), forwarded) {
                (false, _) => tokio::time::Instant::now() + self.settings.stream_timeout,
                (true, 0) => first
                    .deadline(feed)
                    .unwrap_or_else(|| tokio::time::Instant::now() + first.hard),
                (true, _) => tokio::time::Instant::now() + self.settings.frame_timeout,
            };
            let next = tokio::select! {
                next = tokio::time::timeout_at(deadline, frames.message()) => next,
                chunk = feed.next(), if !feed.complete() => {
                    if let Some(status) = feed.error.take() {
                        return Err(fail(status));
                    }
                    forward_text(&mut input, chunk, feed.complete());
                    continue;
                }
            };
            let next = match next {
                Ok(next) => next,
                Err(_) if feed.complete() && forwarded == 0 => {
                    if !first.expired(self.pool.has_alternative(address)) {
                        continue;
                    }
                    return Err(fail(Status::deadline_exceeded(format!(
                        "no frame from worker {address} within {:?}",
                        first.waited()
                    ))));
                }
                Err(_) => {
                    let wait = if feed.complete() {
                        self.settings.frame_timeout
                    } else {
                        self.settings.stream_timeout
                    };
                    return Err(fail(Status::deadline_exceeded(format!(
                        "no frame from worker {address} within {wait:?}"
                    ))));
                }
            };
            let frame = match next {
                Ok(Some(frame)) => frame,
                Ok(None) => {
                    // A stream that ends without its final frame is a violation.
                    validator
                        .finish()
                        .map_err(|v| fail(self.violation(address, &v)))?;
                    return Ok(forwarded);
                }
                Err(status) => return Err(fail(status)),
            };
            let kind = validator
                .observe(&frame)
                .map_err(|v| fail(self.violation(address, &v)))?;
            if forwarded == 0 {
                if let Some(latency) = first.latency(feed) {
                    lease.endpoint.record_first_answer(latency);
                }
            }
            if kind.has_audio() {
                let now = Instant::now();
                match last_audio {
                    None => self.metrics.observe(
                        metrics::FIRST_AUDIO,
                        &[("kind", "tts")],
                        now - started,
                    ),
                    Some(previous) => {
                        let nominal = Duration::from_millis(
                            u64::try_from(frame.frame_duration_ms).unwrap_or(0),
                        );
                        let gap = now - previous;
                        let jitter = gap.checked_sub(nominal).unwrap_or_else(|| nominal - gap);
                        self.metrics
                            .observe(metrics::FRAME_JITTER, &[("kind", "tts")], jitter);
                    }
                }
                last_audio = Some(now);
            }
            let is_final = kind.is_final();
            // A client that takes nothing for --client-lag-seconds has fallen
            // that far behind real time (a player takes a frame per frame
            // duration): its turn ends, and the worker is not blamed.
            match tokio::time::timeout(self.settings.client_lag, out.send(frame)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(fail(Status::cancelled("the client went away"))),
                Err(_) => {
                    return Err(AttemptError {
                        status: Status::deadline_exceeded(format!(
                            "the client read no audio for {} s (--client-lag-seconds): the turn \
                             is ended (worker {address} is fine)",
                            self.settings.client_lag.as_secs()
                        )),
                        forwarded,
                        client: true,
                    })
                }
            }
            forwarded += 1;
            if is_final {
                // Reading stops at is_final; dropping the stream ends the call.
                return Ok(forwarded);
            }
        }
    }

    /// Starts one Synthesize call: the chunks received so far, then the
    /// rest as they arrive, half-closing at the end of input. Returns the
    /// frames and the input still open. Existing workers answer only after
    /// the end of input, so the call is opened while feeding it, and its
    /// deadline runs from the end of input.
    async fn open_synthesize(
        &self,
        lease: &Lease,
        feed: &mut TextFeed<'_>,
        trace: &TraceContext,
        first: &mut FirstFrame,
    ) -> Result<
        (
            tonic::Streaming<AudioFrame>,
            Option<mpsc::UnboundedSender<TextChunk>>,
        ),
        Status,
    > {
        let (tx, rx) = mpsc::unbounded_channel();
        for chunk in &feed.sent {
            // The receiver is ours until the call takes it: this cannot fail.
            let _ = tx.send(chunk.clone());
        }
        let mut input = (!feed.complete()).then_some(tx);
        let mut request = Request::new(UnboundedReceiverStream::new(rx));
        request.set_timeout(self.settings.stream_timeout);
        trace.inject(request.metadata_mut());
        let mut client = TtsServiceClient::new(lease.channel.clone());
        let call = client.synthesize(request);
        tokio::pin!(call);
        let address = &lease.endpoint.address;
        loop {
            let deadline = first.deadline(feed);
            tokio::select! {
                response = &mut call => return Ok((response?.into_inner(), input)),
                chunk = feed.next(), if !feed.complete() => {
                    if let Some(status) = feed.error.take() {
                        return Err(status);
                    }
                    forward_text(&mut input, chunk, feed.complete());
                }
                () = sleep_until_some(deadline) => {
                    if first.expired(self.pool.has_alternative(address)) {
                        return Err(Status::deadline_exceeded(format!(
                            "worker {address} did not answer Synthesize within {:?}",
                            first.waited()
                        )));
                    }
                }
            }
        }
    }

    fn violation(&self, address: &str, violation: &voxwire_proto::Violation) -> Status {
        self.metrics
            .inc(metrics::VIOLATIONS, &[("rule", violation.rule.id())]);
        tracing::error!(endpoint = %address, rule = violation.rule.id(), %violation, "worker broke the protocol");
        Status::internal(format!("worker {address} broke the protocol: {violation}"))
    }
}

/// Passes a client's chunk on to the worker; at the end of input, drops the
/// sender, which half-closes the worker's request stream.
fn forward_text(
    input: &mut Option<mpsc::UnboundedSender<TextChunk>>,
    chunk: Option<TextChunk>,
    complete: bool,
) {
    if let (Some(tx), Some(chunk)) = (input.as_ref(), chunk) {
        // A closed stream means the call ended; reading its frames says why.
        let _ = tx.send(chunk);
    }
    if complete {
        *input = None;
    }
}

async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
