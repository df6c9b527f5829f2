//! `stt.STTService`: one Recognize stream = one recognizer on its own thread.
//!
//! The async side reads and checks requests and resamples the audio to
//! 16 kHz; a dedicated thread runs the recognizer (blocking model work never
//! touches the runtime) and turns its events into validated TranscriptEvents.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use voxwire_proto::metrics;
use voxwire_proto::stt::stt_service_server::SttService;
use voxwire_proto::stt::{
    Capabilities, GetCapabilitiesRequest, GetCapabilitiesResponse, RecognitionConfig,
    RecognizeRequest, TranscriptEvent,
};
use voxwire_proto::stt_stream::{
    check_choice, SttLimits, SttOffer, SttRequestValidator, SttStreamValidator,
};
use voxwire_proto::{Rule, Violation};
use voxwire_service::{Drain, InFlight};
use voxwire_whisper::{EndpointConfig, Recognizer, RecognizerEvent, WhisperModel, SAMPLE_RATE};

/// Rates the worker advertises; any rate in 8–48 kHz is accepted and resampled.
const ADVERTISED_RATES: [i32; 6] = [8_000, 16_000, 22_050, 24_000, 44_100, 48_000];
/// Audio pieces queued for the recognizer thread; when full, reading from
/// the client pauses (HTTP/2 flow control pushes back on the client).
const AUDIO_QUEUE: usize = 256;

#[derive(Debug, Clone)]
pub struct SttConfig {
    pub max_sessions: usize,
    /// See `--stream-idle-seconds`.
    pub stream_idle: Duration,
    pub limits: SttLimits,
    pub endpointing: EndpointConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] voxwire_whisper::WhisperError),
    #[error("the loading task failed: {0}")]
    Join(String),
}

/// Shared state of every stream.
pub struct SttWorker {
    config: SttConfig,
    model: watch::Sender<Option<WhisperModel>>,
    drain: Drain,
    streams: AtomicUsize,
    /// Real-time factor, exponentially weighted, as f64 bits.
    rtf_bits: AtomicU64,
}

impl SttWorker {
    pub fn new(config: SttConfig, drain: Drain) -> Arc<Self> {
        Arc::new(SttWorker {
            config,
            model: watch::channel(None).0,
            drain,
            streams: AtomicUsize::new(0),
            rtf_bits: AtomicU64::new(0f64.to_bits()),
        })
    }

    /// Loads the model and runs one warm-up decode; the worker is ready after.
    pub async fn load_and_warm_up(
        self: &Arc<Self>,
        dir: std::path::PathBuf,
    ) -> Result<(), LoadError> {
        let started = Instant::now();
        let model = tokio::task::spawn_blocking(move || {
            let model = WhisperModel::load(&dir)?;
            // One second of quiet noise: exercises mel, encoder and decoder.
            let warm: Vec<f32> = (0..SAMPLE_RATE)
                .map(|i| 0.001 * ((i as f32) * 0.37).sin())
                .collect();
            model.transcribe(&warm)?;
            Ok::<_, voxwire_whisper::WhisperError>(model)
        })
        .await
        .map_err(|e| LoadError::Join(e.to_string()))??;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "model loaded and warmed up"
        );
        self.model.send_replace(Some(model));
        Ok(())
    }

    fn model(&self) -> Option<WhisperModel> {
        self.model.borrow().clone()
    }

    fn record_rtf(&self, compute: Duration, audio_seconds: f64) {
        if audio_seconds <= 0.0 {
            return;
        }
        let sample = compute.as_secs_f64() / audio_seconds;
        let old = f64::from_bits(self.rtf_bits.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            sample
        } else {
            0.9 * old + 0.1 * sample
        };
        self.rtf_bits.store(new.to_bits(), Ordering::Relaxed);
    }

    pub fn load_metrics(&self) -> HashMap<String, f64> {
        let active = self.streams.load(Ordering::Acquire) as f64;
        let max = self.config.max_sessions as f64;
        HashMap::from([
            (metrics::ACTIVE_SESSIONS.to_string(), active),
            (metrics::ACTIVE_STREAMS.to_string(), active),
            (metrics::QUEUED_REQUESTS.to_string(), 0.0),
            (metrics::MAX_SESSIONS.to_string(), max),
            (
                metrics::REAL_TIME_FACTOR.to_string(),
                f64::from_bits(self.rtf_bits.load(Ordering::Relaxed)),
            ),
            (
                metrics::LOAD.to_string(),
                if max > 0.0 { active / max } else { 1.0 },
            ),
            (
                metrics::MAX_CHUNK_BYTES.to_string(),
                self.config.limits.max_chunk_bytes as f64,
            ),
            (
                metrics::MAX_STREAM_SECONDS.to_string(),
                f64::from(self.config.limits.max_stream_seconds),
            ),
        ])
    }

    /// Takes a stream slot: `None` past the limit.
    fn admit_stream(self: &Arc<Self>) -> Option<StreamSlot> {
        let max = self.config.max_sessions;
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(StreamSlot {
            worker: Arc::clone(self),
        })
    }
}

/// Held for a stream's life; returns its slot when dropped (also on cancel).
struct StreamSlot {
    worker: Arc<SttWorker>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.worker.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Clone)]
pub struct SttServiceImpl {
    worker: Arc<SttWorker>,
}

impl SttServiceImpl {
    pub fn new(worker: Arc<SttWorker>) -> Self {
        SttServiceImpl { worker }
    }
}

/// What the reader hands the recognizer thread.
enum Audio {
    Samples(Vec<f32>),
    End,
}

type EventSender = mpsc::Sender<Result<TranscriptEvent, Status>>;

#[tonic::async_trait]
impl SttService for SttServiceImpl {
    type RecognizeStream = ReceiverStream<Result<TranscriptEvent, Status>>;

    async fn recognize(
        &self,
        request: Request<Streaming<RecognizeRequest>>,
    ) -> Result<Response<Self::RecognizeStream>, Status> {
        let Some(model) = self.worker.model() else {
            return Err(Violation::new(
                Rule::HealthGate,
                "the model is still loading (health NOT_SERVING)",
            )
            .into());
        };
        let in_flight = self.worker.drain.admit()?;
        let slot = self.worker.admit_stream().ok_or_else(|| {
            Violation::new(
                Rule::SttCapacity,
                format!(
                    "{} streams open, the limit",
                    self.worker.config.max_sessions
                ),
            )
            .to_status()
        })?;
        let mut input = request.into_inner();
        let mut requests = SttRequestValidator::new(self.worker.config.limits);
        let idle = self.worker.config.stream_idle;
        let first = match tokio::time::timeout(idle, input.message())
            .await
            .map_err(|_| idle_stream(idle))??
        {
            Some(first) => first,
            None => {
                requests.half_closed()?;
                return Err(Status::invalid_argument("empty stream"));
            }
        };
        let config = requests.accept_config(&first)?.clone();
        let models = [MODEL_ID.to_string()];
        let languages = languages();
        check_choice(
            &config,
            SttOffer {
                models: &models,
                languages: &languages,
            },
        )?;
        let resampler = voxwire_dsp::StreamResampler::new(
            u32::try_from(config.sample_rate).unwrap_or(SAMPLE_RATE),
            SAMPLE_RATE,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (events_tx, events_rx) = mpsc::channel(64);
        let (audio_tx, audio_rx) = mpsc::channel(AUDIO_QUEUE);
        let recognizer = Recognizer::new(
            model,
            self.worker.config.endpointing,
            config.partial_results,
        );
        let thread = RecognizerThread {
            worker: Arc::clone(&self.worker),
            config: config.clone(),
            events: events_tx.clone(),
            _slot: slot,
            _in_flight: in_flight,
        };
        std::thread::Builder::new()
            .name(format!("stt-{}", config.session_id))
            .spawn(move || thread.run(recognizer, audio_rx))
            .map_err(|e| Status::internal(format!("cannot start a recognizer thread: {e}")))?;
        tokio::spawn(read_audio(
            input, requests, resampler, audio_tx, events_tx, idle,
        ));
        Ok(Response::new(ReceiverStream::new(events_rx)))
    }

    async fn get_capabilities(
        &self,
        _request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        let resident = if self.worker.model().is_some() {
            vec![MODEL_ID.to_string()]
        } else {
            Vec::new()
        };
        Ok(Response::new(GetCapabilitiesResponse {
            capabilities: Some(Capabilities {
                streaming: true,
                partial_results: true,
                languages: languages(),
                sample_rates: ADVERTISED_RATES.to_vec(),
                max_concurrent_sessions: i32::try_from(self.worker.config.max_sessions)
                    .unwrap_or(i32::MAX),
            }),
            resident_models: resident,
            metrics: self.worker.load_metrics(),
        }))
    }
}

/// The model id GetCapabilities lists and a config may name.
const MODEL_ID: &str = "whisper";

/// What this worker recognizes: the engine decodes English only (it sets no
/// language token, as the `*.en` checkpoints need none).
fn languages() -> Vec<String> {
    vec!["en".to_string()]
}

/// A client that sent nothing for `idle`: its stream is closed, returning
/// the slot it holds.
fn idle_stream(idle: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "no request from the client within {} s (--stream-idle-seconds): the stream is closed",
        idle.as_secs()
    ))
}

/// Reads the client's audio, checks each request, resamples to 16 kHz and
/// queues it for the recognizer; ends the audio at is_final or half-close.
/// A client silent for `idle` ends the stream with DEADLINE_EXCEEDED.
async fn read_audio(
    mut input: Streaming<RecognizeRequest>,
    mut requests: SttRequestValidator,
    mut resampler: voxwire_dsp::StreamResampler,
    audio: mpsc::Sender<Audio>,
    events: EventSender,
    idle: Duration,
) {
    loop {
        let Ok(next) = tokio::time::timeout(idle, input.message()).await else {
            // Dropping `audio` stops the recognizer without a final.
            let _ = events.send(Err(idle_stream(idle))).await;
            return;
        };
        let request = match next {
            Ok(Some(request)) => request,
            Ok(None) => {
                if let Err(violation) = requests.half_closed() {
                    let _ = events.send(Err(violation.to_status())).await;
                    return;
                }
                break;
            }
            // The client cancelled or broke the stream: dropping `audio`
            // stops the recognizer without a final.
            Err(_) => return,
        };
        let (pcm, end) = match requests.accept_audio(&request) {
            Ok(audio) => audio,
            Err(violation) => {
                let _ = events.send(Err(violation.to_status())).await;
                return;
            }
        };
        let samples = voxwire_dsp::i16_to_f32(&voxwire_proto::audio::decode_pcm16(pcm));
        match resampler.push(&samples) {
            Ok(resampled) if !resampled.is_empty() => {
                if audio.send(Audio::Samples(resampled)).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = events.send(Err(Status::internal(e.to_string()))).await;
                return;
            }
        }
        if end {
            break;
        }
    }
    match resampler.finish() {
        Ok(rest) => {
            if !rest.is_empty() && audio.send(Audio::Samples(rest)).await.is_err() {
                return;
            }
        }
        Err(e) => {
            let _ = events.send(Err(Status::internal(e.to_string()))).await;
            return;
        }
    }
    if audio.send(Audio::End).await.is_err() {
        return;
    }
    // Keep reading until the client half-closes, to catch requests after the
    // end of audio; hold the event channel only weakly meanwhile, so the
    // response stream ends as soon as the recognizer has sent its last final.
    let events = events.downgrade();
    drop(audio);
    while let Ok(Ok(Some(late))) = tokio::time::timeout(idle, input.message()).await {
        if let Err(violation) = requests.accept(&late) {
            if let Some(events) = events.upgrade() {
                let _ = events.send(Err(violation.to_status())).await;
            }
            return;
        }
    }
}

struct RecognizerThread {
    worker: Arc<SttWorker>,
    config: RecognitionConfig,
    events: EventSender,
    _slot: StreamSlot,
    _in_flight: InFlight,
}

impl RecognizerThread {
    fn run(self, mut recognizer: Recognizer, mut audio: mpsc::Receiver<Audio>) {
        let mut validator =
            SttStreamValidator::new(self.config.session_id.clone(), self.config.partial_results);
        let mut sequence = 0i64;
        while let Some(piece) = audio.blocking_recv() {
            let (result, ended) = match piece {
                Audio::Samples(samples) => {
                    let started = Instant::now();
                    let result = recognizer.push(&samples);
                    self.worker.record_rtf(
                        started.elapsed(),
                        samples.len() as f64 / f64::from(SAMPLE_RATE),
                    );
                    (result, false)
                }
                Audio::End => {
                    validator.end_of_audio();
                    (recognizer.finish(), true)
                }
            };
            let produced = match result {
                Ok(events) => events,
                Err(error) => {
                    tracing::error!(session = %self.config.session_id, %error, "recognition failed");
                    let _ = self
                        .events
                        .blocking_send(Err(Status::internal(error.to_string())));
                    return;
                }
            };
            for event in produced {
                sequence += 1;
                let event = self.to_wire(event, sequence);
                if let Err(violation) = validator.observe(&event) {
                    tracing::error!(%violation, "refusing to send an invalid event");
                    let _ = self
                        .events
                        .blocking_send(Err(Status::internal(violation.to_string())));
                    return;
                }
                if self.events.blocking_send(Ok(event)).is_err() {
                    // The client is gone.
                    return;
                }
            }
            if ended {
                if let Err(violation) = validator.finish() {
                    tracing::error!(%violation, "own stream invalid at its end");
                    let _ = self
                        .events
                        .blocking_send(Err(Status::internal(violation.to_string())));
                }
                return;
            }
        }
    }

    fn to_wire(&self, event: RecognizerEvent, sequence_number: i64) -> TranscriptEvent {
        TranscriptEvent {
            session_id: self.config.session_id.clone(),
            utterance_id: event.utterance_id,
            text: event.text,
            is_final: event.is_final,
            start_ms: event.start_ms,
            end_ms: event.end_ms,
            sequence_number,
            confidence: event.confidence,
        }
    }
}
