//! `tts.TTSService`: sessions, streaming synthesis, control, models and load.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use voxwire_proto::audio::FrameFormat;
use voxwire_proto::metrics;
use voxwire_proto::session::validate_session_id;
use voxwire_proto::tts::tts_service_server::TtsService;
use voxwire_proto::tts::{
    AudioFrame, Capabilities, ControlCommand, ControlRequest, ControlResponse, EndSessionRequest,
    EndSessionResponse, GetCapabilitiesRequest, GetCapabilitiesResponse, ListModelsRequest,
    ListModelsResponse, LoadModelRequest, LoadModelResponse, ModelInfo, StartSessionRequest,
    StartSessionResponse, TextChunk, UnloadModelRequest, UnloadModelResponse,
};
use voxwire_proto::tts_stream::{
    check_chunk_session, check_text_limit, Framer, TtsStreamValidator,
};
use voxwire_proto::{Rule, Violation};
use voxwire_service::{Drain, InFlight};

use crate::engine::{self, Catalogue, EngineError, Voice, VoiceSource};
use crate::text::SentenceSplitter;

/// Frames buffered between synthesis and the network per call: enough to
/// ride out scheduling hiccups, small enough that a STOP or cancel drops
/// little work.
const FRAME_BUFFER: usize = 64;

/// How the worker behaves; the CLI fills it in.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub default_model: String,
    pub max_sessions: usize,
    pub max_text_chars: usize,
    /// Sentences synthesized at once across all calls (CPU-bound work).
    pub inference_slots: usize,
    /// Pace frames at real time (one 20 ms frame per 20 ms), as a live voice
    /// source would; for load tests.
    pub realtime: bool,
    /// A session unused this long is closed, so clients that vanish without
    /// EndSession do not hold capacity forever.
    pub session_idle: Duration,
}

struct Session {
    model_id: String,
    voice: RwLock<Arc<dyn Voice>>,
    paused: watch::Sender<bool>,
    /// Bumped by STOP: a running call that sees it change ends its synthesis.
    stops: watch::Sender<u64>,
    last_used: Mutex<Instant>,
    calls: AtomicUsize,
}

impl Session {
    fn voice(&self) -> Arc<dyn Voice> {
        Arc::clone(&self.voice.read().unwrap_or_else(|e| e.into_inner()))
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }
}

/// The service state, shared by every call.
pub struct TtsWorker {
    config: WorkerConfig,
    catalogue: Catalogue,
    loaded: RwLock<HashMap<String, Arc<dyn Voice>>>,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    drain: Drain,
    ready: watch::Sender<bool>,
    inference: Arc<Semaphore>,
    queued: AtomicUsize,
    /// Real-time factor, exponentially weighted, as f64 bits.
    rtf_bits: AtomicU64,
}

/// One request counted in `queued_requests` while it waits for an
/// inference slot. A guard, because a cancelled call drops its wait
/// mid-await: a decrement after the await never ran, and the gauge leaked
/// (the orchestrator then kept avoiding the worker).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(counter: &'a AtomicUsize) -> Queued<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Queued(counter)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves plain data behind that
    // is still consistent for our uses (maps of Arcs).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl TtsWorker {
    pub fn new(config: WorkerConfig, catalogue: Catalogue, drain: Drain) -> Arc<Self> {
        let slots = config.inference_slots.max(1);
        Arc::new(TtsWorker {
            config,
            catalogue,
            loaded: RwLock::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            drain,
            ready: watch::channel(false).0,
            inference: Arc::new(Semaphore::new(slots)),
            queued: AtomicUsize::new(0),
            rtf_bits: AtomicU64::new(0f64.to_bits()),
        })
    }

    /// Loads the default voice and runs one warm-up synthesis; after this the
    /// worker is ready (the caller reports SERVING).
    pub async fn load_default_and_warm_up(self: &Arc<Self>) -> Result<(), EngineError> {
        let id = self.config.default_model.clone();
        let voice = self.load_model(&id).await?;
        let started = Instant::now();
        let warm = tokio::task::spawn_blocking(move || voice.synthesize("Ready."))
            .await
            .map_err(|e| EngineError::Synthesis(e.to_string()))??;
        tracing::info!(
            model = %id,
            samples = warm.len(),
            ms = started.elapsed().as_millis() as u64,
            "warm-up synthesis done"
        );
        self.ready.send_replace(true);
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Loads a voice of the catalogue (or returns it if loaded).
    async fn load_model(&self, model_id: &str) -> Result<Arc<dyn Voice>, EngineError> {
        if let Some(voice) = self.loaded_voice(model_id) {
            return Ok(voice);
        }
        let voice = self.load_fresh(model_id).await?;
        self.loaded
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(model_id.to_string(), Arc::clone(&voice));
        Ok(voice)
    }

    /// Loads a voice from its source, bypassing what is loaded (RELOAD).
    async fn load_fresh(&self, model_id: &str) -> Result<Arc<dyn Voice>, EngineError> {
        let source = self
            .catalogue
            .get(model_id)
            .cloned()
            .ok_or_else(|| EngineError::UnknownModel(model_id.to_string()))?;
        let id = model_id.to_string();
        let started = Instant::now();
        let voice = tokio::task::spawn_blocking(move || engine::load(&id, &source))
            .await
            .map_err(|e| EngineError::Load {
                model_id: model_id.to_string(),
                reason: e.to_string(),
            })??;
        tracing::info!(
            model = model_id,
            ms = started.elapsed().as_millis() as u64,
            "voice loaded"
        );
        Ok(voice)
    }

    fn loaded_voice(&self, model_id: &str) -> Option<Arc<dyn Voice>> {
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(model_id)
            .cloned()
    }

    fn session(&self, id: &str) -> Result<Arc<Session>, Status> {
        lock(&self.sessions).get(id).cloned().ok_or_else(|| {
            Violation::new(Rule::TtsSessionUnknown, format!("no open session {id:?}")).to_status()
        })
    }

    fn active_sessions(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Closes sessions idle past the configured bound. Called periodically.
    pub fn reap_idle_sessions(&self) -> usize {
        let idle = self.config.session_idle;
        let mut sessions = lock(&self.sessions);
        let before = sessions.len();
        sessions.retain(|id, session| {
            let busy = session.calls.load(Ordering::Acquire) > 0;
            let fresh = lock(&session.last_used).elapsed() < idle;
            if !busy && !fresh {
                tracing::info!(session = %id, "closing idle session");
            }
            busy || fresh
        });
        before - sessions.len()
    }

    fn real_time_factor(&self) -> f64 {
        f64::from_bits(self.rtf_bits.load(Ordering::Relaxed))
    }

    fn record_rtf(&self, compute: Duration, audio_seconds: f64) {
        if audio_seconds <= 0.0 {
            return;
        }
        let sample = compute.as_secs_f64() / audio_seconds;
        let old = self.real_time_factor();
        let new = if old == 0.0 {
            sample
        } else {
            0.8 * old + 0.2 * sample
        };
        self.rtf_bits.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Starts synthesizing one sentence off the runtime, at the wire rate, as
    /// 16-bit samples that arrive on the returned receiver piece by piece as
    /// the engine produces them; it closes after the last piece, or after
    /// the error. Dropping it stops the engine at its next piece. Waits for an
    /// inference slot first.
    async fn synthesize_sentence(
        self: &Arc<Self>,
        voice: Arc<dyn Voice>,
        sentence: String,
    ) -> Result<SentenceAudio, EngineError> {
        let permit = {
            let _queued = Queued::enter(&self.queued);
            Arc::clone(&self.inference).acquire_owned().await
        };
        let permit = permit.map_err(|e| EngineError::Synthesis(e.to_string()))?;
        // Unbounded on purpose: a paused or paced call must not hold its
        // inference slot while its audio waits. What it can hold is one
        // sentence's audio, as when sentences were synthesized whole.
        let (tx, rx) = mpsc::unbounded_channel();
        let worker = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let started = Instant::now();
            let out_rate = FrameFormat::DEFAULT.sample_rate();
            match stream_sentence(voice.as_ref(), &sentence, out_rate, &tx) {
                Ok(audio_seconds) => worker.record_rtf(started.elapsed(), audio_seconds),
                Err(error) => {
                    let _ = tx.send(Err(error));
                }
            }
        });
        Ok(rx)
    }

    fn refuse_unless_serving(&self) -> Result<InFlight, Status> {
        if !self.is_ready() {
            return Err(Status::unavailable(
                "HEALTH-GATE: the voice is still loading (health NOT_SERVING)",
            ));
        }
        self.drain
            .admit()
            .ok_or_else(|| Status::unavailable("HEALTH-DRAIN: the worker is draining"))
    }

    fn model_info(&self, model_id: &str) -> ModelInfo {
        let loaded = self.loaded_voice(model_id);
        let (family, languages, mut metadata) = match (&loaded, self.catalogue.get(model_id)) {
            (Some(voice), _) => {
                let info = voice.info();
                (
                    info.family.clone(),
                    info.languages.clone(),
                    info.metadata.clone().into_iter().collect::<HashMap<_, _>>(),
                )
            }
            (None, Some(VoiceSource::Tone)) => (
                "tone (test engine, not speech)".to_string(),
                vec!["und".to_string()],
                HashMap::from([("engine".to_string(), "tone".to_string())]),
            ),
            (None, _) => (
                "piper".to_string(),
                Vec::new(),
                HashMap::from([("engine".to_string(), "piper".to_string())]),
            ),
        };
        if model_id == self.config.default_model {
            metadata.insert("default".to_string(), "true".to_string());
        }
        ModelInfo {
            model_id: model_id.to_string(),
            family,
            is_loaded: loaded.is_some(),
            languages,
            metadata,
        }
    }

    /// The live load figures of GetCapabilities, by well-known key.
    pub fn load_metrics(&self) -> HashMap<String, f64> {
        let active = self.active_sessions() as f64;
        let max = self.config.max_sessions as f64;
        HashMap::from([
            (metrics::ACTIVE_SESSIONS.to_string(), active),
            (
                metrics::ACTIVE_STREAMS.to_string(),
                self.drain.in_flight() as f64,
            ),
            (
                metrics::QUEUED_REQUESTS.to_string(),
                self.queued.load(Ordering::Relaxed) as f64,
            ),
            (metrics::MAX_SESSIONS.to_string(), max),
            (
                metrics::REAL_TIME_FACTOR.to_string(),
                self.real_time_factor(),
            ),
            (
                metrics::LOAD.to_string(),
                if max > 0.0 { active / max } else { 1.0 },
            ),
            (
                metrics::MAX_TEXT_CHARS.to_string(),
                self.config.max_text_chars as f64,
            ),
        ])
    }
}

/// Pieces of one sentence's audio at the wire rate, in order.
type SentenceAudio = mpsc::UnboundedReceiver<Result<Vec<i16>, EngineError>>;

/// Runs the voice on one sentence, resampling each piece to `out_rate` and
/// sending it on as 16-bit samples; stops early once nobody receives.
/// Returns the seconds of audio the voice produced.
fn stream_sentence(
    voice: &dyn Voice,
    sentence: &str,
    out_rate: u32,
    out: &mpsc::UnboundedSender<Result<Vec<i16>, EngineError>>,
) -> Result<f64, EngineError> {
    let resampling = |e: voxwire_dsp::DspError| EngineError::Synthesis(e.to_string());
    let rate = voice.info().sample_rate;
    let mut resampler = voxwire_dsp::StreamResampler::new(rate, out_rate).map_err(resampling)?;
    let mut produced = 0usize;
    let mut failed = None;
    voice.synthesize_streaming(sentence, &mut |audio| {
        produced += audio.len();
        match resampler.push(&audio) {
            Ok(wire) if wire.is_empty() => ControlFlow::Continue(()),
            Ok(wire) => match out.send(Ok(voxwire_dsp::f32_to_i16(&wire))) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            },
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if let Some(e) = failed {
        return Err(resampling(e));
    }
    if !out.is_closed() {
        let tail = resampler.finish().map_err(resampling)?;
        if !tail.is_empty() {
            let _ = out.send(Ok(voxwire_dsp::f32_to_i16(&tail)));
        }
    }
    Ok(produced as f64 / f64::from(rate.max(1)))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn engine_status(error: EngineError) -> Status {
    match error {
        EngineError::UnknownModel(id) => {
            Violation::new(Rule::TtsModelUnknown, format!("no model {id:?}")).to_status()
        }
        other => Status::internal(other.to_string()),
    }
}

/// The service handle tonic serves.
#[derive(Clone)]
pub struct TtsServiceImpl {
    worker: Arc<TtsWorker>,
}

impl TtsServiceImpl {
    pub fn new(worker: Arc<TtsWorker>) -> Self {
        TtsServiceImpl { worker }
    }
}

type FrameStream = ReceiverStream<Result<AudioFrame, Status>>;

#[tonic::async_trait]
impl TtsService for TtsServiceImpl {
    async fn start_session(
        &self,
        request: Request<StartSessionRequest>,
    ) -> Result<Response<StartSessionResponse>, Status> {
        let request = request.into_inner();
        validate_session_id(&request.session_id)?;
        let _admitted = self.worker.refuse_unless_serving()?;
        let model_id = if request.model_id.is_empty() {
            self.worker.config.default_model.clone()
        } else {
            request.model_id.clone()
        };
        if self.worker.catalogue.get(&model_id).is_none() {
            return Err(Violation::new(
                Rule::TtsModelUnknown,
                format!("no model {model_id:?}; ListModels names the ones there are"),
            )
            .into());
        }
        // Checked before loading (which can be slow) and again when inserting.
        self.check_room(&request.session_id)?;
        let voice = self
            .worker
            .load_model(&model_id)
            .await
            .map_err(engine_status)?;
        let mut sessions = lock(&self.worker.sessions);
        self.check_room_locked(&sessions, &request.session_id)?;
        sessions.insert(
            request.session_id.clone(),
            Arc::new(Session {
                model_id: model_id.clone(),
                voice: RwLock::new(voice),
                paused: watch::channel(false).0,
                stops: watch::channel(0).0,
                last_used: Mutex::new(Instant::now()),
                calls: AtomicUsize::new(0),
            }),
        );
        tracing::info!(session = %request.session_id, model = %model_id, "session started");
        Ok(Response::new(StartSessionResponse {
            success: true,
            message: format!("session started with model {model_id}"),
        }))
    }

    async fn end_session(
        &self,
        request: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        let id = request.into_inner().session_id;
        if let Some(session) = lock(&self.worker.sessions).remove(&id) {
            // A call still running on the session ends with its final frame.
            session.stops.send_modify(|n| *n += 1);
            tracing::info!(session = %id, "session ended");
        }
        Ok(Response::new(EndSessionResponse { success: true }))
    }

    type SynthesizeStream = FrameStream;

    async fn synthesize(
        &self,
        request: Request<Streaming<TextChunk>>,
    ) -> Result<Response<Self::SynthesizeStream>, Status> {
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(FRAME_BUFFER);
        let Some(first) = input.message().await? else {
            // Zero chunks: the lone end marker, so the stream still has its
            // one final frame. No chunk named a session, so none is echoed.
            let framer = Framer::new("", FrameFormat::DEFAULT);
            let _ = tx.send(Ok(framer.finish())).await;
            return Ok(Response::new(ReceiverStream::new(rx)));
        };
        let session = self.worker.session(&first.session_id)?;
        let in_flight = self
            .worker
            .drain
            .admit()
            .ok_or_else(|| Status::unavailable("HEALTH-DRAIN: the worker is draining"))?;
        session.touch();
        let (sentence_tx, sentence_rx) = mpsc::channel(16);
        tokio::spawn(read_text(
            input,
            first.clone(),
            self.worker.config.max_text_chars,
            sentence_tx,
        ));
        // Subscribed here, before the call is spawned, so a STOP sent as soon
        // as the call is admitted is not missed.
        let mut stops = session.stops.subscribe();
        stops.borrow_and_update();
        let call = Call {
            worker: Arc::clone(&self.worker),
            stops,
            session,
            session_id: first.session_id,
            out: tx,
            _in_flight: in_flight,
        };
        tokio::spawn(call.run(sentence_rx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn control(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<ControlResponse>, Status> {
        let request = request.into_inner();
        let session = self.worker.session(&request.session_id)?;
        session.touch();
        let command = ControlCommand::try_from(request.command).map_err(|_| {
            Status::invalid_argument(format!("unknown control command {}", request.command))
        })?;
        let message = match command {
            ControlCommand::Pause => {
                session.paused.send_replace(true);
                "paused"
            }
            ControlCommand::Resume => {
                session.paused.send_replace(false);
                "resumed"
            }
            ControlCommand::Stop => {
                session.stops.send_modify(|n| *n += 1);
                session.paused.send_replace(false);
                "stopped"
            }
            ControlCommand::Reload => {
                let voice = self
                    .worker
                    .load_fresh(&session.model_id)
                    .await
                    .map_err(engine_status)?;
                self.worker
                    .loaded
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(session.model_id.clone(), Arc::clone(&voice));
                *session.voice.write().unwrap_or_else(|e| e.into_inner()) = voice;
                "reloaded"
            }
        };
        tracing::info!(session = %request.session_id, command = message, "control");
        Ok(Response::new(ControlResponse {
            success: true,
            message: message.to_string(),
            timestamp_ms: now_ms(),
        }))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let models = self
            .worker
            .catalogue
            .ids()
            .map(|id| self.worker.model_info(id))
            .collect();
        Ok(Response::new(ListModelsResponse { models }))
    }

    async fn load_model(
        &self,
        request: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelResponse>, Status> {
        let id = request.into_inner().model_id;
        let started = Instant::now();
        let already = self.worker.loaded_voice(&id).is_some();
        self.worker.load_model(&id).await.map_err(engine_status)?;
        Ok(Response::new(LoadModelResponse {
            success: true,
            message: if already { "already loaded" } else { "loaded" }.to_string(),
            load_duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        }))
    }

    async fn unload_model(
        &self,
        request: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelResponse>, Status> {
        let id = request.into_inner().model_id;
        if self.worker.catalogue.get(&id).is_none() {
            return Err(engine_status(EngineError::UnknownModel(id)));
        }
        let removed = self
            .worker
            .loaded
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .is_some();
        // Open sessions keep their own reference and go on speaking.
        Ok(Response::new(UnloadModelResponse {
            success: true,
            message: if removed {
                "unloaded"
            } else {
                "was not loaded"
            }
            .to_string(),
        }))
    }

    async fn get_capabilities(
        &self,
        _request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        let loaded = self.worker.loaded.read().unwrap_or_else(|e| e.into_inner());
        let mut languages: Vec<String> = loaded
            .values()
            .flat_map(|v| v.info().languages.clone())
            .collect();
        languages.sort();
        languages.dedup();
        let resident_models = loaded.keys().cloned().collect();
        drop(loaded);
        Ok(Response::new(GetCapabilitiesResponse {
            capabilities: Some(Capabilities {
                streaming: true,
                zero_shot: false,
                lora: false,
                cpu_ok: true,
                languages,
                emotive_zero_prompt: false,
                max_concurrent_sessions: i32::try_from(self.worker.config.max_sessions)
                    .unwrap_or(i32::MAX),
            }),
            resident_models,
            metrics: self.worker.load_metrics(),
        }))
    }
}

impl TtsServiceImpl {
    fn check_room(&self, id: &str) -> Result<(), Status> {
        self.check_room_locked(&lock(&self.worker.sessions), id)
    }

    fn check_room_locked(
        &self,
        sessions: &HashMap<String, Arc<Session>>,
        id: &str,
    ) -> Result<(), Status> {
        if sessions.contains_key(id) {
            return Err(Violation::new(
                Rule::TtsSessionDuplicate,
                format!("session {id:?} is already open"),
            )
            .into());
        }
        if sessions.len() >= self.worker.config.max_sessions {
            return Err(Violation::new(
                Rule::TtsCapacity,
                format!(
                    "{} sessions open, the limit is {}",
                    sessions.len(),
                    self.worker.config.max_sessions
                ),
            )
            .into());
        }
        Ok(())
    }
}

/// Reads a call's text, hands out sentences as they complete, and stops at
/// the chunk with is_final or at half-close, whichever comes first.
async fn read_text(
    mut input: Streaming<TextChunk>,
    first: TextChunk,
    max_chars: usize,
    sentences: mpsc::Sender<Result<String, Status>>,
) {
    let session_id = first.session_id.clone();
    let mut splitter = SentenceSplitter::new();
    let mut chars = 0usize;
    let mut next = Some(first);
    while let Some(chunk) = next.take() {
        let checked = check_chunk_session(Some(&session_id), &chunk).and_then(|()| {
            chars += chunk.text.chars().count();
            check_text_limit(chars, max_chars)
        });
        if let Err(violation) = checked {
            let _ = sentences.send(Err(violation.to_status())).await;
            return;
        }
        for sentence in splitter.push(&chunk.text) {
            if sentences.send(Ok(sentence)).await.is_err() {
                return;
            }
        }
        if chunk.is_final {
            break;
        }
        next = match input.message().await {
            Ok(chunk) => chunk,
            Err(status) => {
                // The client went away or broke the stream; nothing to answer.
                tracing::debug!(session = %session_id, %status, "text stream ended with an error");
                return;
            }
        };
    }
    if let Some(last) = splitter.finish() {
        let _ = sentences.send(Ok(last)).await;
    }
}

/// One Synthesize call: sentences in, validated frames out.
struct Call {
    worker: Arc<TtsWorker>,
    stops: watch::Receiver<u64>,
    session: Arc<Session>,
    session_id: String,
    out: mpsc::Sender<Result<AudioFrame, Status>>,
    _in_flight: InFlight,
}

/// Why a call stopped early.
enum Halt {
    /// STOP or EndSession: end with the final frame.
    Stopped,
    /// The client is gone, or an error was sent: send nothing more.
    Gone,
}

impl Call {
    async fn run(self, mut sentences: mpsc::Receiver<Result<String, Status>>) {
        self.session.calls.fetch_add(1, Ordering::AcqRel);
        let mut stops = self.stops.clone();
        let mut framer = Framer::new(self.session_id.clone(), FrameFormat::DEFAULT);
        let mut sender = FrameSender {
            out: self.out.clone(),
            validator: TtsStreamValidator::new(self.session_id.clone()),
            paused: self.session.paused.subscribe(),
            pace: self.worker.config.realtime.then(|| (Instant::now(), 0u32)),
        };
        let halt = self
            .speak(&mut sentences, &mut stops, &mut framer, &mut sender)
            .await;
        if !matches!(halt, Some(Halt::Gone)) {
            let last = framer.finish();
            if sender.send(last, &mut stops).await.is_ok() {
                if let Err(violation) = sender.validator.finish() {
                    tracing::error!(session = %self.session_id, %violation, "own stream invalid");
                }
            }
        }
        self.session.touch();
        self.session.calls.fetch_sub(1, Ordering::AcqRel);
    }

    /// Synthesizes sentence by sentence until the text ends (`None`) or the
    /// call halts.
    async fn speak(
        &self,
        sentences: &mut mpsc::Receiver<Result<String, Status>>,
        stops: &mut watch::Receiver<u64>,
        framer: &mut Framer,
        sender: &mut FrameSender,
    ) -> Option<Halt> {
        loop {
            let next = tokio::select! {
                biased;
                _ = stops.changed() => return Some(Halt::Stopped),
                () = self.out.closed() => return Some(Halt::Gone),
                next = sentences.recv() => next,
            };
            let sentence = match next {
                None => return None,
                Some(Ok(sentence)) => sentence,
                Some(Err(status)) => {
                    let _ = self.out.send(Err(status)).await;
                    return Some(Halt::Gone);
                }
            };
            let voice = self.session.voice();
            let audio = tokio::select! {
                biased;
                _ = stops.changed() => return Some(Halt::Stopped),
                () = self.out.closed() => return Some(Halt::Gone),
                audio = self.worker.synthesize_sentence(voice, sentence) => audio,
            };
            let mut audio = match audio {
                Ok(audio) => audio,
                Err(error) => return Some(self.synthesis_failed(error).await),
            };
            // Frames leave as each piece of the sentence is ready.
            loop {
                let piece = tokio::select! {
                    biased;
                    _ = stops.changed() => return Some(Halt::Stopped),
                    () = self.out.closed() => return Some(Halt::Gone),
                    piece = audio.recv() => piece,
                };
                let samples = match piece {
                    None => break,
                    Some(Ok(samples)) => samples,
                    Some(Err(error)) => return Some(self.synthesis_failed(error).await),
                };
                for frame in framer.push(&samples) {
                    if let Err(halt) = sender.send(frame, stops).await {
                        return Some(halt);
                    }
                }
            }
        }
    }

    async fn synthesis_failed(&self, error: EngineError) -> Halt {
        tracing::error!(session = %self.session_id, %error, "synthesis failed");
        let _ = self
            .out
            .send(Err(Status::internal(error.to_string())))
            .await;
        Halt::Gone
    }
}

/// Sends frames: validated, held while paused, paced when asked.
struct FrameSender {
    out: mpsc::Sender<Result<AudioFrame, Status>>,
    validator: TtsStreamValidator,
    paused: watch::Receiver<bool>,
    /// Start of pacing and frames sent, when pacing at real time.
    pace: Option<(Instant, u32)>,
}

impl FrameSender {
    /// Sends one frame. A STOP while paused still lets this frame out (its
    /// sequence number is taken) and then halts the call.
    async fn send(
        &mut self,
        frame: AudioFrame,
        stops: &mut watch::Receiver<u64>,
    ) -> Result<(), Halt> {
        let mut halt = None;
        if !frame.is_final && *self.paused.borrow() {
            tokio::select! {
                _ = self.paused.wait_for(|paused| !paused) => {}
                _ = stops.changed() => halt = Some(Halt::Stopped),
                () = self.out.closed() => return Err(Halt::Gone),
            }
        }
        if let Err(violation) = self.validator.observe(&frame) {
            // Our own bug: say so rather than send a frame that breaks the contract.
            tracing::error!(%violation, "refusing to send an invalid frame");
            let _ = self
                .out
                .send(Err(Status::internal(violation.to_string())))
                .await;
            return Err(Halt::Gone);
        }
        if let Some((start, sent)) = self.pace.as_mut() {
            let due = *start + Duration::from_millis(u64::from(*sent) * 20);
            tokio::time::sleep_until(due.into()).await;
            *sent += 1;
        }
        self.out.send(Ok(frame)).await.map_err(|_| Halt::Gone)?;
        halt.map_or(Ok(()), Err)
    }
}
