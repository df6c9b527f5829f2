//! One Recognize relay: the client's (already validated) requests go to a
//! worker, its transcript events come back validated. Until the first event
//! reaches the client the requests sent are kept, so a retryable failure can
//! replay them on another worker; after it, a failure ends the stream.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Status};
use voxwire_proto::audio::SAMPLE_BYTES;
use voxwire_proto::stt::stt_service_client::SttServiceClient;
use voxwire_proto::stt::{recognize_request, RecognitionConfig, RecognizeRequest, TranscriptEvent};
use voxwire_proto::stt_stream::SttStreamValidator;

use crate::config::DispatchSettings;
use crate::metrics::{self, Metrics};
use crate::pool::{Lease, Pool};
use crate::retry::{first_answer, lost_worker_as_unavailable, run_turn, Failed, Turn};
use crate::trace::TraceContext;

pub struct SttDispatcher {
    pool: Arc<Pool>,
    settings: DispatchSettings,
    metrics: Arc<Metrics>,
}

/// What the attempts of one stream share.
struct Relay<'a> {
    config: RecognitionConfig,
    input: &'a mut mpsc::Receiver<RecognizeRequest>,
    input_done: bool,
    /// Requests sent so far; `None` once an event reached the client.
    replay: Option<Vec<RecognizeRequest>>,
    /// Milliseconds of audio the client has sent.
    audio_ms: f64,
    out: &'a mpsc::Sender<TranscriptEvent>,
}

/// How long a worker may take, after the end of audio, per millisecond of
/// audio it has not yet answered for. A whole file sent faster than real time
/// leaves an honest backlog; a worker catching up at real time (Whisper tiny
/// runs several times faster) is not wedged and must not be blamed for it.
const BACKLOG_ALLOWANCE: f64 = 1.0;

/// The deadline for the worker's next event once the audio has ended: the
/// first-frame deadline, plus time for the audio not yet covered by an event.
fn after_audio_deadline(first_frame: Duration, audio_ms: f64, answered_ms: i64) -> Duration {
    let backlog_ms = (audio_ms - answered_ms.max(0) as f64).max(0.0);
    first_frame + Duration::from_secs_f64(backlog_ms * BACKLOG_ALLOWANCE / 1000.0)
}

/// One Recognize stream as a [`Turn`]: retried only while its audio can be
/// replayed (no event has reached the client).
struct SttTurn<'d, 'r, 'a> {
    dispatcher: &'d SttDispatcher,
    relay: &'r mut Relay<'a>,
    trace: &'d TraceContext,
}

impl Turn for SttTurn<'_, '_, '_> {
    type Done = ();

    async fn attempt(&mut self, lease: &Lease) -> Result<(), Failed> {
        match self.dispatcher.attempt(lease, self.relay, self.trace).await {
            Ok(()) => Ok(()),
            Err(status) => Err(Failed {
                status: lost_worker_as_unavailable(status),
                committed: self.relay.replay.is_none(),
                client: false,
            }),
        }
    }
}

impl SttDispatcher {
    pub fn new(pool: Arc<Pool>, settings: DispatchSettings, metrics: Arc<Metrics>) -> Self {
        SttDispatcher {
            pool,
            settings,
            metrics,
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Relays one Recognize stream. `input` holds the audio requests after
    /// the config; its end is the client's half-close.
    pub async fn recognize(
        &self,
        config: RecognitionConfig,
        input: &mut mpsc::Receiver<RecognizeRequest>,
        trace: &TraceContext,
        out: &mpsc::Sender<TranscriptEvent>,
    ) -> Result<(), Status> {
        let mut relay = Relay {
            config,
            input,
            input_done: false,
            replay: Some(Vec::new()),
            audio_ms: 0.0,
            out,
        };
        let mut turn = SttTurn {
            dispatcher: self,
            relay: &mut relay,
            trace,
        };
        run_turn("stt", &self.pool, &self.settings, &self.metrics, &mut turn)
            .await
            .map(|_| ())
    }

    async fn attempt(
        &self,
        lease: &Lease,
        relay: &mut Relay<'_>,
        trace: &TraceContext,
    ) -> Result<(), Status> {
        let address = &lease.endpoint.address;
        // Unbounded: the replay is queued before the call starts to read.
        let (tx, rx) = mpsc::unbounded_channel();
        let config = RecognizeRequest {
            request: Some(recognize_request::Request::Config(relay.config.clone())),
        };
        let mut sender = Some(tx);
        let send = |sender: &Option<mpsc::UnboundedSender<RecognizeRequest>>,
                    request: RecognizeRequest| {
            if let Some(tx) = sender {
                // The call's end drops the receiver; its own error says why.
                let _ = tx.send(request);
            }
        };
        send(&sender, config);
        for request in relay.replay.iter().flatten() {
            send(&sender, request.clone());
        }
        if relay.input_done {
            sender = None;
        }
        let mut request = Request::new(UnboundedReceiverStream::new(rx));
        request.set_timeout(self.settings.stream_timeout);
        trace.inject(request.metadata_mut());
        let mut client = SttServiceClient::new(lease.channel.clone());
        // Its response comes at once from a live worker (events come with
        // speech): past what this one usually takes, the stream, replayed,
        // goes to another worker when there is one.
        let opened = std::time::Instant::now();
        let soft = self
            .settings
            .attempt_deadline
            .for_p95(self.pool.first_answer_p95(&lease.endpoint))
            .min(self.settings.first_frame_timeout);
        let mut events = match first_answer(
            client.recognize(request),
            soft,
            self.settings.first_frame_timeout,
            || self.pool.has_alternative(address),
        )
        .await
        {
            Ok(response) => {
                let events = response?.into_inner();
                lease.endpoint.record_first_answer(opened.elapsed());
                events
            }
            Err(waited) => {
                return Err(Status::deadline_exceeded(format!(
                    "worker {address} did not answer Recognize within {waited:?}"
                )))
            }
        };
        let mut validator = SttStreamValidator::new(
            relay.config.session_id.clone(),
            relay.config.partial_results,
        );
        // The end of the audio the worker has answered for, from its events'
        // end_ms (partials count: they show progress).
        let mut answered_ms = 0i64;
        let sample_rate = f64::from(relay.config.sample_rate.max(1));
        let mut ended_input = relay.input_done;
        if ended_input {
            validator.end_of_audio();
        }
        loop {
            tokio::select! {
                next = relay.input.recv(), if !relay.input_done => match next {
                    Some(request) => {
                        let is_end = matches!(&request.request, Some(recognize_request::Request::Audio(a)) if a.is_final);
                        if let Some(recognize_request::Request::Audio(audio)) = &request.request {
                            relay.audio_ms += audio.audio_data.len() as f64 * 1000.0
                                / (sample_rate * SAMPLE_BYTES as f64);
                        }
                        if let Some(replay) = relay.replay.as_mut() {
                            replay.push(request.clone());
                        }
                        send(&sender, request);
                        if is_end {
                            relay.input_done = true;
                        }
                    }
                    None => {
                        relay.input_done = true;
                        sender = None;
                    }
                },
                event = next_event(
                    &mut events,
                    relay.input_done,
                    after_audio_deadline(self.settings.first_frame_timeout, relay.audio_ms, answered_ms),
                ) => {
                    let event = match event.map_err(|status| {
                        if status.code() == tonic::Code::DeadlineExceeded {
                            Status::deadline_exceeded(format!("worker {address}: {}", status.message()))
                        } else {
                            status
                        }
                    })? {
                        Some(event) => event,
                        None => {
                            return validator.finish().map_err(|v| self.violation(address, &v));
                        }
                    };
                    validator.observe(&event).map_err(|v| self.violation(address, &v))?;
                    answered_ms = answered_ms.max(event.end_ms);
                    // From here on the client saw output: no more retries.
                    relay.replay = None;
                    if relay.out.send(event).await.is_err() {
                        return Err(Status::cancelled("the client went away"));
                    }
                }
            }
            if relay.input_done && !ended_input {
                ended_input = true;
                validator.end_of_audio();
                sender = None;
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

/// The worker's next event. While audio is still coming the worker may
/// rightly stay silent (no speech yet); once the audio has ended, each event
/// (the last finals) must come within `deadline` ([`after_audio_deadline`]),
/// or a wedged worker would hold the stream until the whole-call timeout.
async fn next_event(
    events: &mut tonic::Streaming<TranscriptEvent>,
    input_done: bool,
    deadline: Duration,
) -> Result<Option<TranscriptEvent>, Status> {
    if !input_done {
        return events.message().await;
    }
    match tokio::time::timeout(deadline, events.message()).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no transcript event within {deadline:?} after the end of audio"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(10);

    #[test]
    fn a_worker_that_answered_all_audio_gets_the_first_frame_deadline() {
        assert_eq!(after_audio_deadline(FIRST, 4_000.0, 4_000), FIRST);
        // end_ms past the audio (rounding) does not shorten it.
        assert_eq!(after_audio_deadline(FIRST, 4_000.0, 4_020), FIRST);
    }

    #[test]
    fn long_audio_sent_fast_leaves_time_for_its_backlog() {
        // 61 s sent in a burst, nothing answered yet: the worker has the
        // deadline plus the audio's length, not 10 s for a minute of speech.
        assert_eq!(
            after_audio_deadline(FIRST, 61_000.0, 0),
            FIRST + Duration::from_secs(61)
        );
        // Each event shrinks what is left.
        assert_eq!(
            after_audio_deadline(FIRST, 61_000.0, 31_000),
            FIRST + Duration::from_secs(30)
        );
    }
}
