//! Flags, start-up and shutdown of the TTS worker.
//!
//! The port is bound first and health answers NOT_SERVING while the voice
//! loads; SERVING comes only after one warm-up synthesis. SIGTERM drains.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use voxwire_proto::service_names;
use voxwire_proto::tts::tts_service_server::TtsServiceServer;
use voxwire_service::tls::{ServerTlsArgs, TlsError};
use voxwire_service::{Drain, Health, RunError, ServiceError};

use crate::engine::{piper_voice_id, Catalogue, DecodeWindows, EngineError, VoiceSource};
use crate::service::{TtsServiceImpl, TtsWorker, WorkerConfig};

/// The voice used when neither --voice nor a catalogue preference says otherwise.
pub const DEFAULT_PIPER_DIR: &str = "piper-en_US-joe-medium";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EngineKind {
    /// A Piper voice run on candle (the product).
    Piper,
    /// Deterministic tones derived from the text: tests and load runs only.
    Tone,
}

/// voxwire TTS worker: text in, a stream of 20 ms PCM frames out.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tts-worker", version, about)]
pub struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "VOXWIRE_LISTEN", default_value = "0.0.0.0:50061")]
    pub listen: String,
    /// Synthesis engine.
    #[arg(long, env = "VOXWIRE_ENGINE", value_enum, default_value = "piper")]
    pub engine: EngineKind,
    /// A Piper voice: the .onnx (with its .onnx.json beside it) or a directory
    /// holding voices. Default: VOXWIRE_MODEL_DIR/piper-en_US-joe-medium.
    #[arg(long, env = "VOXWIRE_VOICE")]
    pub voice: Option<PathBuf>,
    /// Directory laid out like shared/models, for the default voice.
    #[arg(long, env = "VOXWIRE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Sessions open at once; StartSession past it fails RESOURCE_EXHAUSTED.
    #[arg(long, env = "VOXWIRE_MAX_SESSIONS", default_value_t = 64)]
    pub max_sessions: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "VOXWIRE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Longest text one Synthesize call may carry, in characters.
    #[arg(long, env = "VOXWIRE_MAX_TEXT_CHARS", default_value_t = 20_000)]
    pub max_text_chars: usize,
    /// Sentences synthesized at once (default: the number of cores).
    #[arg(long, env = "VOXWIRE_INFERENCE_SLOTS")]
    pub inference_slots: Option<usize>,
    /// Pace frames at real time, as a live source would (load tests).
    #[arg(long, env = "VOXWIRE_REALTIME")]
    pub realtime: bool,
    /// Bound on finishing in-flight work after SIGTERM, in seconds.
    #[arg(long, env = "VOXWIRE_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// Largest gRPC message accepted, in bytes (past it: OUT_OF_RANGE).
    #[arg(long, env = "VOXWIRE_MAX_MESSAGE_BYTES", default_value_t = voxwire_service::limits::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// Close sessions unused for this long, in seconds.
    #[arg(long, env = "VOXWIRE_SESSION_IDLE_SECONDS", default_value_t = 300)]
    pub session_idle_seconds: u64,
    /// Piper decoder windows in latent frames (about 11.6 ms each), FIRST,MAX:
    /// the first window of a sentence, doubling up to MAX; frames leave as
    /// each window is decoded. `whole` decodes each sentence at once.
    #[arg(long, env = "VOXWIRE_DECODE_WINDOW", default_value_t = DecodeWindows::DEFAULT)]
    pub decode_window: DecodeWindows,
}

impl Args {
    /// Defaults for tests: the tone engine on a free loopback port.
    pub fn tone_for_tests() -> Args {
        Args {
            listen: "127.0.0.1:0".to_string(),
            engine: EngineKind::Tone,
            voice: None,
            model_dir: None,
            max_sessions: 64,
            metrics_listen: None,
            max_text_chars: 20_000,
            inference_slots: None,
            realtime: false,
            drain_seconds: 5,
            max_message_bytes: voxwire_service::limits::DEFAULT_MAX_MESSAGE_BYTES,
            tls: ServerTlsArgs::default(),
            session_idle_seconds: 300,
            decode_window: DecodeWindows::DEFAULT,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Run(#[from] RunError<EngineError>),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The voices this worker offers and which one is the default.
pub fn catalogue(args: &Args) -> Result<(Catalogue, String), WorkerError> {
    let mut catalogue = Catalogue::default();
    match args.engine {
        EngineKind::Tone => {
            catalogue.insert("tone", VoiceSource::Tone);
            Ok((catalogue, "tone".to_string()))
        }
        EngineKind::Piper => {
            let path = match (&args.voice, &args.model_dir) {
                (Some(voice), _) => voice.clone(),
                (None, Some(dir)) => dir.join(DEFAULT_PIPER_DIR),
                (None, None) => {
                    return Err(WorkerError::Config(
                        "no voice: give --voice PATH or set VOXWIRE_MODEL_DIR".to_string(),
                    ))
                }
            };
            let default = add_piper_path(&mut catalogue, &path, args.decode_window)?;
            Ok((catalogue, default))
        }
    }
}

fn add_piper_path(
    catalogue: &mut Catalogue,
    path: &Path,
    windows: DecodeWindows,
) -> Result<String, WorkerError> {
    if path.is_dir() {
        catalogue
            .add_piper_dir(path, windows)
            .map_err(|e| WorkerError::Config(format!("cannot read {}: {e}", path.display())))?;
        return catalogue.ids().next().map(str::to_string).ok_or_else(|| {
            WorkerError::Config(format!(
                "{} holds no Piper voice (.onnx with its .onnx.json)",
                path.display()
            ))
        });
    }
    let id = piper_voice_id(path).ok_or_else(|| {
        WorkerError::Config(format!(
            "{} is not a Piper voice (.onnx with its .onnx.json beside it)",
            path.display()
        ))
    })?;
    catalogue.insert(
        id.clone(),
        VoiceSource::Piper {
            path: path.to_path_buf(),
            windows,
        },
    );
    Ok(id)
}

/// A worker started by [`start`].
pub type RunningWorker = voxwire_service::Running<TtsWorker, EngineError>;

/// Binds, serves (NOT_SERVING), loads and warms the voice in the background
/// (then SERVING), and drains when `stop` resolves.
pub async fn start(
    args: &Args,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningWorker, WorkerError> {
    let (catalogue, default_model) = catalogue(args)?;
    let tls = args.tls.load()?;
    let (listener, addr) = voxwire_service::bind(&args.listen).await?;
    let (health, health_service) = Health::new(&[service_names::TTS]).await;
    let drain = Drain::new();
    let config = WorkerConfig {
        default_model,
        max_sessions: args.max_sessions,
        max_text_chars: args.max_text_chars,
        inference_slots: args.inference_slots.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
        realtime: args.realtime,
        session_idle: Duration::from_secs(args.session_idle_seconds),
    };
    let worker = TtsWorker::new(config, catalogue, drain.clone());
    let registry = Arc::new(voxwire_service::metrics::Registry::default());
    let grpc = voxwire_service::metrics::GrpcMetrics::new(Arc::clone(&registry));
    let metrics_addr = match &args.metrics_listen {
        Some(metrics_addr) => {
            let w = Arc::clone(&worker);
            let bound = voxwire_service::serve_load_metrics(
                metrics_addr,
                "voxwire_tts",
                move || w.load_metrics(),
                registry,
            )
            .await?;
            Some(bound)
        }
        None => None,
    };
    let router = voxwire_service::tls::server_builder(tls.as_ref())?
        .add_service(health_service)
        .add_service(voxwire_service::reflection(&[<TtsServiceServer<
            TtsServiceImpl,
        > as tonic::server::NamedService>::NAME])?)
        .add_service(voxwire_service::reflection_v1alpha(&[<TtsServiceServer<
            TtsServiceImpl,
        > as tonic::server::NamedService>::NAME])?)
        .add_service(
            grpc.wrap(
                TtsServiceServer::new(TtsServiceImpl::new(Arc::clone(&worker)))
                    .max_decoding_message_size(args.max_message_bytes),
            ),
        );
    tracing::info!(%addr, tls = ?tls, "tts-worker listening (NOT_SERVING until the voice is warm)");

    {
        let worker = Arc::clone(&worker);
        let period = (worker_idle(args) / 4).max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                worker.reap_idle_sessions();
            }
        });
    }
    let warm_up = {
        let worker = Arc::clone(&worker);
        async move { worker.load_default_and_warm_up().await }
    };
    let task = voxwire_service::spawn_gated(
        router,
        listener,
        health,
        drain,
        Duration::from_secs(args.drain_seconds),
        stop,
        warm_up,
    );
    Ok(RunningWorker::new(addr, worker, task).with_metrics(metrics_addr))
}

fn worker_idle(args: &Args) -> Duration {
    Duration::from_secs(args.session_idle_seconds)
}

/// Runs until SIGTERM (then drains and returns) or a start-up failure.
pub async fn run(args: Args) -> Result<(), WorkerError> {
    let running = start(&args, voxwire_service::shutdown_signal()).await?;
    Ok(running.wait().await?)
}
