//! Flags, start-up and shutdown of the STT worker: the port is bound first,
//! health says NOT_SERVING while the model loads, SERVING after one warm-up
//! decode; SIGTERM drains.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use voxwire_proto::service_names;
use voxwire_proto::stt::stt_service_server::SttServiceServer;
use voxwire_proto::stt_stream::SttLimits;
use voxwire_service::tls::{ServerTlsArgs, TlsError};
use voxwire_service::{Drain, Health, RunError, ServiceError};
use voxwire_whisper::EndpointConfig;

use crate::service::{LoadError, SttConfig, SttServiceImpl, SttWorker};

/// The model used when --model is not given: VOXWIRE_MODEL_DIR/<this>.
pub const DEFAULT_MODEL_DIR: &str = "whisper-tiny.en";

/// voxwire STT worker: audio in, partial and final transcripts out.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "stt-worker", version, about)]
pub struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "VOXWIRE_LISTEN", default_value = "0.0.0.0:50071")]
    pub listen: String,
    /// Whisper model directory (Hugging Face layout: config.json,
    /// tokenizer.json, model.safetensors, mel_filters_80.f32le).
    /// Default: VOXWIRE_MODEL_DIR/whisper-tiny.en.
    #[arg(long, env = "VOXWIRE_MODEL")]
    pub model: Option<PathBuf>,
    /// Directory laid out like shared/models, for the default model.
    #[arg(long, env = "VOXWIRE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Recognize streams at once; past it RESOURCE_EXHAUSTED.
    #[arg(long, env = "VOXWIRE_MAX_SESSIONS", default_value_t = 4)]
    pub max_sessions: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long, env = "VOXWIRE_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Largest audio chunk accepted, in bytes.
    #[arg(long, env = "VOXWIRE_MAX_CHUNK_BYTES", default_value_t = SttLimits::default().max_chunk_bytes)]
    pub max_chunk_bytes: usize,
    /// Longest stream accepted, in seconds of audio.
    #[arg(long, env = "VOXWIRE_MAX_STREAM_SECONDS", default_value_t = SttLimits::default().max_stream_seconds)]
    pub max_stream_seconds: u32,
    /// Silence that ends an utterance, in milliseconds: longer than a pause
    /// mid-sentence. The final is decoded while it runs.
    #[arg(long, env = "VOXWIRE_ENDPOINT_SILENCE_MS", default_value_t = EndpointConfig::default().min_silence_ms)]
    pub endpoint_silence_ms: u32,
    /// Speech before an utterance's first partial transcript, in milliseconds.
    #[arg(long, env = "VOXWIRE_FIRST_PARTIAL_MS", default_value_t = EndpointConfig::default().first_partial_ms)]
    pub first_partial_ms: u32,
    /// Audio between two partial transcripts, in milliseconds.
    #[arg(long, env = "VOXWIRE_PARTIAL_INTERVAL_MS", default_value_t = EndpointConfig::default().partial_interval_ms)]
    pub partial_interval_ms: u32,
    /// Close a Recognize stream whose client sends nothing for this long
    /// (a config-only or stalled stream would hold its slot for ever), in
    /// seconds; past it: DEADLINE_EXCEEDED.
    #[arg(long, env = "VOXWIRE_STREAM_IDLE_SECONDS", default_value_t = 30)]
    pub stream_idle_seconds: u64,
    /// Bound on finishing in-flight work after SIGTERM, in seconds.
    #[arg(long, env = "VOXWIRE_DRAIN_SECONDS", default_value_t = 10)]
    pub drain_seconds: u64,
    /// Largest gRPC message accepted, in bytes (past it: OUT_OF_RANGE).
    #[arg(long, env = "VOXWIRE_MAX_MESSAGE_BYTES", default_value_t = voxwire_service::limits::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
}

impl Args {
    /// Defaults for tests: a free loopback port, the given model.
    pub fn for_tests(model: PathBuf) -> Args {
        Args {
            listen: "127.0.0.1:0".to_string(),
            model: Some(model),
            model_dir: None,
            max_sessions: 4,
            metrics_listen: None,
            max_chunk_bytes: SttLimits::default().max_chunk_bytes,
            max_stream_seconds: SttLimits::default().max_stream_seconds,
            endpoint_silence_ms: EndpointConfig::default().min_silence_ms,
            first_partial_ms: EndpointConfig::default().first_partial_ms,
            partial_interval_ms: EndpointConfig::default().partial_interval_ms,
            stream_idle_seconds: 30,
            drain_seconds: 5,
            max_message_bytes: voxwire_service::limits::DEFAULT_MAX_MESSAGE_BYTES,
            tls: ServerTlsArgs::default(),
        }
    }

    fn model_path(&self) -> Result<PathBuf, WorkerError> {
        match (&self.model, &self.model_dir) {
            (Some(model), _) => Ok(model.clone()),
            (None, Some(dir)) => Ok(dir.join(DEFAULT_MODEL_DIR)),
            (None, None) => Err(WorkerError::Config(
                "no model: give --model DIR or set VOXWIRE_MODEL_DIR".to_string(),
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Run(#[from] RunError<LoadError>),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A worker started by [`start`].
pub type RunningWorker = voxwire_service::Running<SttWorker, LoadError>;

pub async fn start(
    args: &Args,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<RunningWorker, WorkerError> {
    let model_path = args.model_path()?;
    let tls = args.tls.load()?;
    let (listener, addr) = voxwire_service::bind(&args.listen).await?;
    let (health, health_service) = Health::new(&[service_names::STT]).await;
    let drain = Drain::new();
    let config = SttConfig {
        max_sessions: args.max_sessions,
        // Zero would close every stream at once; a second is the least.
        stream_idle: std::time::Duration::from_secs(args.stream_idle_seconds.max(1)),
        limits: SttLimits {
            max_chunk_bytes: args.max_chunk_bytes,
            max_stream_seconds: args.max_stream_seconds,
        },
        endpointing: EndpointConfig {
            min_silence_ms: args.endpoint_silence_ms,
            first_partial_ms: args.first_partial_ms,
            partial_interval_ms: args.partial_interval_ms,
            ..EndpointConfig::default()
        },
    };
    let worker = SttWorker::new(config, drain.clone());
    let registry = Arc::new(voxwire_service::metrics::Registry::default());
    let grpc = voxwire_service::metrics::GrpcMetrics::new(Arc::clone(&registry));
    let metrics_addr = match &args.metrics_listen {
        Some(metrics_addr) => {
            let w = Arc::clone(&worker);
            let bound = voxwire_service::serve_load_metrics(
                metrics_addr,
                "voxwire_stt",
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
        .add_service(voxwire_service::reflection(&[<SttServiceServer<
            SttServiceImpl,
        > as tonic::server::NamedService>::NAME])?)
        .add_service(voxwire_service::reflection_v1alpha(&[<SttServiceServer<
            SttServiceImpl,
        > as tonic::server::NamedService>::NAME])?)
        .add_service(
            grpc.wrap(
                SttServiceServer::new(SttServiceImpl::new(Arc::clone(&worker)))
                    .max_decoding_message_size(args.max_message_bytes),
            ),
        );
    tracing::info!(%addr, model = %model_path.display(), tls = ?tls, "stt-worker listening (NOT_SERVING until the model is warm)");
    let warm_up = {
        let worker = Arc::clone(&worker);
        async move { worker.load_and_warm_up(model_path).await }
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

/// Runs until SIGTERM (then drains and returns) or a start-up failure.
pub async fn run(args: Args) -> Result<(), WorkerError> {
    let running = start(&args, voxwire_service::shutdown_signal()).await?;
    Ok(running.wait().await?)
}
