//! One TTS turn: pick a worker, make sure the client's session is open on
//! it, run one Synthesize, validate and forward the frames. Retries what
//! may succeed elsewhere, and only before the first frame was forwarded.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::{Code, Request, Status};
use tracing::Instrument;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{AudioFrame, EndSessionRequest, StartSessionRequest, TextChunk};
use voxwire_proto::tts_stream::TtsStreamValidator;

use crate::config::DispatchSettings;
use crate::metrics::{self, Metrics};
use crate::pool::{Lease, Pool};
use crate::retry::{code_label, is_retryable};
use crate::trace::TraceContext;

/// The client session's presence on a worker.
#[derive(Debug, Clone, Default)]
pub struct TtsBinding {
    /// The id used on the worker (the client's session id).
    pub session_id: String,
    pub model_id: String,
    pub options: HashMap<String, String>,
    /// The worker the session is open on, if any.
    pub endpoint: Option<String>,
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

/// Why one attempt failed, and whether the client already saw output.
struct AttemptError {
    status: Status,
    forwarded: u64,
}

impl From<Status> for AttemptError {
    fn from(status: Status) -> Self {
        AttemptError {
            status,
            forwarded: 0,
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
        let started = Instant::now();
        let mut tried: Vec<String> = Vec::new();
        let mut attempt = 0u32;
        let result = loop {
            attempt += 1;
            let lease = match self
                .pool
                .acquire(
                    binding.endpoint.as_deref(),
                    &tried,
                    self.settings.ready_wait,
                )
                .await
            {
                Ok(lease) => lease,
                Err(none) => break Err(Status::from(none)),
            };
            let address = lease.endpoint.address.clone();
            let span = tracing::info_span!("dispatch", endpoint = %address, attempt);
            match self
                .attempt(&lease, binding, text, trace, out, started)
                .instrument(span)
                .await
            {
                Ok(frames) => {
                    break Ok(TurnStats {
                        endpoint: address,
                        attempts: attempt,
                        frames,
                    })
                }
                Err(error) => {
                    let code = error.status.code();
                    let retry = error.forwarded == 0
                        && is_retryable(code)
                        && self.settings.retry.allows_after(attempt);
                    tracing::warn!(endpoint = %address, attempt, status = %error.status, retry, "TTS attempt failed");
                    if !retry {
                        let status = if error.forwarded > 0 && error.status.code() != Code::Internal
                        {
                            // A transport failure mid-stream (h2 reset, connection
                            // lost) surfaces as UNKNOWN; it means the worker went away.
                            let code = match error.status.code() {
                                _ if out.is_closed() => Code::Cancelled,
                                Code::Unknown | Code::Cancelled => Code::Unavailable,
                                other => other,
                            };
                            Status::new(
                                code,
                                format!(
                                    "worker {address} failed after {} frames: {}",
                                    error.forwarded,
                                    error.status.message()
                                ),
                            )
                        } else {
                            error.status
                        };
                        break Err(status);
                    }
                    self.metrics.inc(
                        metrics::RETRIES,
                        &[("kind", "tts"), ("code", &code_label(code))],
                    );
                    if code == Code::Unavailable {
                        // The session there is likely gone with the worker.
                        binding.set_endpoint(None);
                    }
                    tried.push(address);
                    drop(lease);
                    tokio::time::sleep(self.settings.retry.delay(attempt)).await;
                }
            }
        };
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(status) => code_label(status.code()),
        };
        self.metrics
            .inc(metrics::TURNS, &[("kind", "tts"), ("outcome", &outcome)]);
        result
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
            match self.bind(&lease, binding, trace).await {
                Ok(_) => return Ok(()),
                Err(status)
                    if is_retryable(status.code()) && self.settings.retry.allows_after(attempt) =>
                {
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

    async fn end_on(&self, address: &str, session_id: &str) {
        let Some(channel) = self.pool.endpoint(address).and_then(|e| e.channel()) else {
            return;
        };
        let mut request = Request::new(EndSessionRequest {
            session_id: session_id.to_string(),
        });
        request.set_timeout(self.settings.call_timeout);
        if let Err(status) = TtsServiceClient::new(channel).end_session(request).await {
            tracing::debug!(endpoint = %address, %status, "EndSession failed");
        }
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
            self.end_on(&previous, &binding.session_id).await;
        }
        let mut client = TtsServiceClient::new(lease.channel.clone());
        let start = || {
            let mut request = Request::new(StartSessionRequest {
                session_id: binding.session_id.clone(),
                model_id: binding.model_id.clone(),
                options: binding.options.clone(),
            });
            request.set_timeout(self.settings.call_timeout);
            trace.inject(request.metadata_mut());
            request
        };
        match client.start_session(start()).await {
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
        text: &str,
        trace: &TraceContext,
        out: &mpsc::Sender<AudioFrame>,
        started: Instant,
    ) -> Result<u64, AttemptError> {
        let fresh = self.bind(lease, binding, trace).await?;
        let address = &lease.endpoint.address;
        let session_id = binding.session_id.clone();
        let mut frames = match self.open_synthesize(lease, &session_id, text, trace).await {
            Err(status) if status.code() == Code::NotFound && !fresh => {
                // The worker forgot a session opened earlier (idle reaping, a
                // restart): open it there again, once. Not a retry of a call
                // that failed on its merits: the orchestrator's view was stale.
                tracing::info!(endpoint = %address, session = %session_id, "re-opening session");
                binding.set_endpoint(None);
                self.bind(lease, binding, trace).await?;
                self.open_synthesize(lease, &session_id, text, trace)
                    .await?
            }
            other => other?,
        };
        let mut validator = TtsStreamValidator::new(session_id);
        let mut forwarded = 0u64;
        let mut last_audio: Option<Instant> = None;
        loop {
            let wait = if forwarded == 0 {
                self.settings.first_frame_timeout
            } else {
                self.settings.frame_timeout
            };
            let fail = |status: Status| AttemptError { status, forwarded };
            let next = match tokio::time::timeout(wait, frames.message()).await {
                Ok(next) => next,
                Err(_) => {
                    return Err(fail(Status::deadline_exceeded(format!(
                        "no frame from worker {address} within {wait:?}"
                    ))))
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
            if out.send(frame).await.is_err() {
                return Err(fail(Status::cancelled("the client went away")));
            }
            forwarded += 1;
            if is_final {
                // Reading stops at is_final; dropping the stream ends the call.
                return Ok(forwarded);
            }
        }
    }

    /// Starts one Synthesize call: one chunk with is_final, then half-close
    /// (the existing workers only start synthesizing at the end of input).
    async fn open_synthesize(
        &self,
        lease: &Lease,
        session_id: &str,
        text: &str,
        trace: &TraceContext,
    ) -> Result<tonic::Streaming<AudioFrame>, Status> {
        let chunk = TextChunk {
            session_id: session_id.to_string(),
            text: text.to_string(),
            is_final: true,
            sequence_number: 1,
        };
        let mut request = Request::new(tokio_stream::iter(vec![chunk]));
        request.set_timeout(self.settings.stream_timeout);
        trace.inject(request.metadata_mut());
        let mut client = TtsServiceClient::new(lease.channel.clone());
        match tokio::time::timeout(
            self.settings.first_frame_timeout,
            client.synthesize(request),
        )
        .await
        {
            Ok(response) => Ok(response?.into_inner()),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "worker {} did not answer Synthesize in time",
                lease.endpoint.address
            ))),
        }
    }

    fn violation(&self, address: &str, violation: &voxwire_proto::Violation) -> Status {
        self.metrics
            .inc(metrics::VIOLATIONS, &[("rule", violation.rule.id())]);
        tracing::error!(endpoint = %address, rule = violation.rule.id(), %violation, "worker broke the protocol");
        Status::internal(format!("worker {address} broke the protocol: {violation}"))
    }
}
