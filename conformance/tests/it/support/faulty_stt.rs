//! A small STT worker: the proto crate's `SttRequestValidator` on the way in,
//! an energy detector for "speech" (each tone an utterance), scripted
//! transcript events on the way out. Correct unless one fault is switched on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use voxwire_proto::stt::stt_service_server::{SttService, SttServiceServer};
use voxwire_proto::stt::*;
use voxwire_proto::stt_stream::{check_choice, SttInput, SttLimits, SttOffer, SttRequestValidator};
use voxwire_proto::{metrics, service_names, Rule, Violation};
use voxwire_service::{Drain, Health};

use super::health::{broken, HealthMode};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SttFault {
    None,
    EmptyPartial,
    PartialUnrequested,
    SeqStartZero,
    SeqGap,
    WrongSessionEcho,
    UtteranceIdZero,
    /// Every final is sent twice.
    DuplicateFinal,
    /// A second utterance starts while the first is open.
    Overlap,
    BadOffsets,
    /// At the end of audio, an open utterance is left without its final.
    CloseWithOpenUtterance,
    /// At the end of audio, no final at all.
    MissingEndFinal,
    /// After the end-of-audio final, the stream is never closed.
    NeverCloses,
    AcceptAudioBeforeConfig,
    AcceptBadRate,
    AcceptOddBytes,
    AcceptAfterEnd,
    IgnoreChunkLimit,
    IgnoreDurationLimit,
    AcceptInvalidSession,
    /// A config naming any model is served.
    AcceptAnyModel,
    /// A config with any language, malformed or not offered, is served.
    AcceptAnyLanguage,
    CapacityNotEnforced,
    HealthAlwaysServing,
    HealthAbsent,
    WatchNotStreaming,
    MetricsMissing,
    /// On drain: still SERVING, still taking new work.
    DrainIgnored,
}

pub const MAX_SESSIONS: usize = 3;
const LIMITS: SttLimits = SttLimits {
    max_chunk_bytes: 32_000,
    max_stream_seconds: 2,
};
/// The models and languages GetCapabilities lists, and a config may name.
fn offer() -> (Vec<String>, Vec<String>) {
    (vec!["detector".to_string()], vec!["und".to_string()])
}

/// Analysis block and the thresholds of the detector.
const BLOCK_MS: u32 = 10;
const SPEECH_RMS: f64 = 500.0;
const HANGOVER_MS: u32 = 300;
const PARTIAL_EVERY_MS: u32 = 300;

impl SttFault {
    /// The request rule this fault lets through.
    fn tolerates(self, rule: Rule) -> bool {
        matches!(
            (self, rule),
            (SttFault::AcceptAudioBeforeConfig, Rule::SttConfigFirst)
                | (SttFault::AcceptBadRate, Rule::SttConfigRate)
                | (SttFault::AcceptOddBytes, Rule::SttAudioOddBytes)
                | (SttFault::AcceptAfterEnd, Rule::SttAudioAfterEnd)
                | (SttFault::IgnoreChunkLimit, Rule::SttChunkLimit)
                | (SttFault::IgnoreDurationLimit, Rule::SttDurationLimit)
                | (SttFault::AcceptInvalidSession, Rule::SessionIdInvalid)
                | (SttFault::AcceptAnyModel, Rule::SttModelUnknown)
                | (SttFault::AcceptAnyLanguage, Rule::SttLanguageUnsupported)
        )
    }
}

struct Emitter {
    tx: mpsc::Sender<Result<TranscriptEvent, Status>>,
    fault: SttFault,
    session: String,
    next_seq: i64,
}

impl Emitter {
    async fn send(
        &mut self,
        utterance: u64,
        text: &str,
        is_final: bool,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<(), ()> {
        if self.next_seq == 1 && self.fault == SttFault::SeqStartZero {
            self.next_seq = 0;
        }
        if self.next_seq == 2 && self.fault == SttFault::SeqGap {
            self.next_seq = 3;
        }
        let (start_ms, end_ms) = if self.fault == SttFault::BadOffsets {
            (end_ms + 10, start_ms)
        } else {
            (start_ms, end_ms)
        };
        let event = TranscriptEvent {
            session_id: if self.fault == SttFault::WrongSessionEcho {
                "someone-else".to_string()
            } else {
                self.session.clone()
            },
            utterance_id: if self.fault == SttFault::UtteranceIdZero {
                utterance - 1
            } else {
                utterance
            },
            text: text.to_string(),
            is_final,
            start_ms,
            end_ms,
            sequence_number: self.next_seq,
            confidence: 0.9,
        };
        self.next_seq += 1;
        let repeat = is_final && self.fault == SttFault::DuplicateFinal;
        self.tx.send(Ok(event.clone())).await.map_err(drop)?;
        if repeat {
            let again = TranscriptEvent {
                sequence_number: self.next_seq,
                ..event
            };
            self.next_seq += 1;
            self.tx.send(Ok(again)).await.map_err(drop)?;
        }
        Ok(())
    }
}

/// The detector: utterances are runs of loud blocks.
struct Recognizer {
    rate: u32,
    partials: bool,
    fault: SttFault,
    pending: Vec<u8>,
    at_ms: u32,
    next_utterance: u64,
    /// Open utterance: id, start, last loud block's end, last partial's time.
    open: Option<(u64, u32, u32, Option<u32>)>,
}

impl Recognizer {
    async fn push(&mut self, pcm: &[u8], out: &mut Emitter) -> Result<(), ()> {
        self.pending.extend_from_slice(pcm);
        let block_bytes = (self.rate * BLOCK_MS / 1000) as usize * 2;
        while self.pending.len() >= block_bytes {
            let block: Vec<u8> = self.pending.drain(..block_bytes).collect();
            let samples = voxwire_proto::audio::decode_pcm16(&block);
            let energy = samples.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>()
                / samples.len().max(1) as f64;
            let loud = energy.sqrt() > SPEECH_RMS;
            let now = self.at_ms;
            self.at_ms += BLOCK_MS;
            let send_partials = self.partials || self.fault == SttFault::PartialUnrequested;
            match (&mut self.open, loud) {
                (None, true) => {
                    let id = self.next_utterance;
                    self.next_utterance += 1;
                    self.open = Some((id, now, now + BLOCK_MS, Some(now)));
                    if send_partials {
                        let text = if self.fault == SttFault::EmptyPartial {
                            ""
                        } else {
                            "tone"
                        };
                        out.send(id, text, false, i64::from(now), i64::from(now + BLOCK_MS))
                            .await?;
                        if self.fault == SttFault::Overlap {
                            out.send(
                                id + 1,
                                "overlap",
                                false,
                                i64::from(now),
                                i64::from(now + BLOCK_MS),
                            )
                            .await?;
                            self.next_utterance += 1;
                        }
                    }
                }
                (Some((id, start, last, partial_at)), true) => {
                    *last = now + BLOCK_MS;
                    if send_partials && partial_at.is_none_or(|p| now >= p + PARTIAL_EVERY_MS) {
                        *partial_at = Some(now);
                        let (id, start, last) = (*id, *start, *last);
                        out.send(id, "tone", false, i64::from(start), i64::from(last))
                            .await?;
                    }
                }
                (Some((id, start, last, _)), false) if now >= *last + HANGOVER_MS => {
                    let (id, start, last) = (*id, *start, *last);
                    self.open = None;
                    out.send(id, "tone", true, i64::from(start), i64::from(last))
                        .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// End of audio: the open utterance's final, or an empty one.
    async fn finish(&mut self, out: &mut Emitter) -> Result<(), ()> {
        match (self.open.take(), self.fault) {
            (_, SttFault::MissingEndFinal) => Ok(()),
            (Some(_), SttFault::CloseWithOpenUtterance) if self.partials => Ok(()),
            (Some((id, start, last, _)), _) => {
                out.send(id, "tone", true, i64::from(start), i64::from(last))
                    .await
            }
            (None, _) => {
                let id = self.next_utterance;
                self.next_utterance += 1;
                out.send(id, "", true, i64::from(self.at_ms), i64::from(self.at_ms))
                    .await
            }
        }
    }
}

struct State {
    fault: SttFault,
    drain: Drain,
    active: Arc<AtomicUsize>,
}

struct Guard(Arc<AtomicUsize>, Option<voxwire_service::InFlight>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
struct FaultySt {
    state: Arc<State>,
}

fn default_config() -> RecognitionConfig {
    RecognitionConfig {
        session_id: "anonymous".to_string(),
        sample_rate: 16_000,
        ..Default::default()
    }
}

/// A request let in: its config (when it was one), its audio, and whether
/// it ended the audio.
type Accepted = (Option<RecognitionConfig>, Vec<u8>, bool);

/// Accepts one request the way the fault allows: a tolerated violation is
/// ignored (a tolerated bad config is replaced by a usable one).
fn accept(
    fault: SttFault,
    validator: &mut SttRequestValidator,
    request: &RecognizeRequest,
) -> Result<Option<Accepted>, Violation> {
    match validator.accept(request) {
        Ok(SttInput::Config(config)) => Ok(Some((Some(config.clone()), Vec::new(), false))),
        Ok(SttInput::Audio { pcm, end_of_audio }) => Ok(Some((None, pcm.to_vec(), end_of_audio))),
        Err(violation) if fault.tolerates(violation.rule) => match &request.request {
            Some(recognize_request::Request::Config(config)) => {
                let usable = RecognitionConfig {
                    session_id: if config.session_id.trim().is_empty() {
                        "anonymous".to_string()
                    } else {
                        config.session_id.clone()
                    },
                    sample_rate: 16_000,
                    ..config.clone()
                };
                let patched = RecognizeRequest {
                    request: Some(recognize_request::Request::Config(usable.clone())),
                };
                let _ = validator.accept(&patched);
                Ok(Some((Some(usable), Vec::new(), false)))
            }
            Some(recognize_request::Request::Audio(chunk)) => {
                if violation.rule == Rule::SttConfigFirst {
                    let patched = RecognizeRequest {
                        request: Some(recognize_request::Request::Config(default_config())),
                    };
                    let _ = validator.accept(&patched);
                    let _ = validator.accept(request);
                    return Ok(Some((
                        Some(default_config()),
                        chunk.audio_data.to_vec(),
                        chunk.is_final,
                    )));
                }
                let mut pcm = chunk.audio_data.to_vec();
                pcm.truncate(pcm.len() & !1);
                Ok(Some((None, pcm, chunk.is_final)))
            }
            None => Ok(None),
        },
        Err(violation) => Err(violation),
    }
}

/// One Recognize call after its first request.
struct Call {
    fault: SttFault,
    input: Streaming<RecognizeRequest>,
    validator: SttRequestValidator,
    config: RecognitionConfig,
    first_audio: Vec<u8>,
    tx: mpsc::Sender<Result<TranscriptEvent, Status>>,
    guard: Guard,
}

/// Reads every request up to the client's half-close: a request after the
/// end of audio is the client's error and is answered as one.
async fn run(call: Call) {
    let Call {
        fault,
        mut input,
        mut validator,
        config,
        first_audio,
        tx,
        guard,
    } = call;
    let mut out = Emitter {
        tx: tx.clone(),
        fault,
        session: config.session_id.clone(),
        next_seq: 1,
    };
    let mut recognizer = Recognizer {
        rate: u32::try_from(config.sample_rate).unwrap_or(16_000),
        partials: config.partial_results,
        fault,
        pending: Vec::new(),
        at_ms: 0,
        next_utterance: 1,
        open: None,
    };
    if recognizer.push(&first_audio, &mut out).await.is_err() {
        return;
    }
    loop {
        let request = match input.message().await {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(_) => return,
        };
        match accept(fault, &mut validator, &request) {
            Ok(Some((_, pcm, _))) => {
                if recognizer.push(&pcm, &mut out).await.is_err() {
                    return;
                }
            }
            Ok(None) => {}
            Err(violation) => {
                let _ = tx.send(Err(violation.to_status())).await;
                return;
            }
        }
    }
    if recognizer.finish(&mut out).await.is_err() {
        return;
    }
    if fault == SttFault::NeverCloses {
        // Holds the sender: the stream stays open until the client leaves.
        tx.closed().await;
    }
    drop(guard);
}

#[tonic::async_trait]
impl SttService for FaultySt {
    type RecognizeStream = ReceiverStream<Result<TranscriptEvent, Status>>;

    async fn recognize(
        &self,
        request: Request<Streaming<RecognizeRequest>>,
    ) -> Result<Response<Self::RecognizeStream>, Status> {
        let fault = self.state.fault;
        let mut input = request.into_inner();
        let mut validator = SttRequestValidator::new(LIMITS);
        let first = input
            .message()
            .await?
            .ok_or_else(|| Violation::new(Rule::SttConfigFirst, "no request").to_status())?;
        let (config, first_audio) = match accept(fault, &mut validator, &first)? {
            Some((Some(config), audio, _)) => (config, audio),
            _ => return Err(Violation::new(Rule::SttConfigFirst, "no config").to_status()),
        };
        let (models, languages) = offer();
        let offered = SttOffer {
            models: &models,
            languages: &languages,
        };
        match check_choice(&config, offered) {
            Err(violation) if !fault.tolerates(violation.rule) => return Err(violation.to_status()),
            _ => {}
        }
        let in_flight = match self.state.drain.admit() {
            Ok(in_flight) => Some(in_flight),
            Err(_) if fault == SttFault::DrainIgnored => None,
            Err(refused) => return Err(refused.to_status()),
        };
        let active = self.state.active.fetch_add(1, Ordering::AcqRel);
        let guard = Guard(Arc::clone(&self.state.active), in_flight);
        if active >= MAX_SESSIONS && fault != SttFault::CapacityNotEnforced {
            return Err(Violation::new(Rule::SttCapacity, "full").to_status());
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(run(Call {
            fault,
            input,
            validator,
            config,
            first_audio,
            tx,
            guard,
        }));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_capabilities(
        &self,
        _request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        let mut load = HashMap::new();
        if self.state.fault != SttFault::MetricsMissing {
            let active = self.state.active.load(Ordering::Acquire) as f64;
            load.insert(metrics::ACTIVE_SESSIONS.to_string(), active);
            load.insert(metrics::ACTIVE_STREAMS.to_string(), active);
            load.insert(metrics::MAX_SESSIONS.to_string(), MAX_SESSIONS as f64);
            load.insert(
                metrics::MAX_CHUNK_BYTES.to_string(),
                LIMITS.max_chunk_bytes as f64,
            );
            load.insert(
                metrics::MAX_STREAM_SECONDS.to_string(),
                f64::from(LIMITS.max_stream_seconds),
            );
        }
        Ok(Response::new(GetCapabilitiesResponse {
            capabilities: Some(Capabilities {
                streaming: true,
                partial_results: true,
                languages: offer().1,
                sample_rates: vec![8_000, 16_000, 44_100],
                max_concurrent_sessions: MAX_SESSIONS as i32,
            }),
            resident_models: offer().0,
            metrics: load,
        }))
    }
}

pub struct RunningFake {
    pub addr: SocketAddr,
    pub stop: super::Stopper,
}

pub async fn start(fault: SttFault) -> RunningFake {
    let (listener, addr) = voxwire_service::bind("127.0.0.1:0").await.expect("bind");
    let (health, health_service) = Health::new(&[service_names::STT]).await;
    health.set_serving(true).await;
    let mode = match fault {
        SttFault::HealthAlwaysServing => HealthMode::AlwaysServing,
        SttFault::HealthAbsent => HealthMode::Absent,
        SttFault::WatchNotStreaming => HealthMode::WatchNotStreaming,
        _ => HealthMode::Real,
    };
    let drain = Drain::new();
    let state = Arc::new(State {
        fault,
        drain: drain.clone(),
        active: Arc::new(AtomicUsize::new(0)),
    });
    let router = Server::builder()
        .add_optional_service((mode == HealthMode::Real).then_some(health_service))
        .add_optional_service(broken(mode, &[service_names::STT]))
        .add_service(SttServiceServer::new(FaultySt { state }));
    let (stop, stopped) = oneshot::channel::<()>();
    let health = if fault == SttFault::DrainIgnored {
        // The bug: the drain reports to a health nobody serves.
        Health::new(&[]).await.0
    } else {
        health
    };
    tokio::spawn(voxwire_service::serve(
        router,
        listener,
        health,
        drain,
        Duration::from_secs(1),
        async {
            let _ = stopped.await;
        },
    ));
    RunningFake {
        addr,
        stop: super::Stopper::new(stop),
    }
}
