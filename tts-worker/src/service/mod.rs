//! `tts.TTSService`: sessions, streaming synthesis, control, models and load.
//!
//! This module holds the worker's state shared by every call (sessions,
//! loaded voices, inference slots, load figures) and the synthesis of one
//! sentence; `handlers` answers the RPCs, and `call` is one Synthesize
//! call's pipeline from text to validated frames.

mod call;
mod handlers;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Semaphore};
use tonic::Status;

use voxwire_proto::audio::FrameFormat;
use voxwire_proto::metrics;
use voxwire_proto::tts::ModelInfo;
use voxwire_proto::{Rule, Violation};
use voxwire_service::{Drain, InFlight};

use crate::engine::{self, Catalogue, EngineError, Voice, VoiceSource};

pub use handlers::TtsServiceImpl;

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
            return Err(Violation::new(
                Rule::HealthGate,
                "the voice is still loading (health NOT_SERVING)",
            )
            .into());
        }
        Ok(self.drain.admit()?)
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
