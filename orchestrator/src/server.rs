//! Start-up and shutdown: pools and discovery, the gRPC server (health,
//! reflection, voxwire.v1, the TTS/STT relays), the HTTP side port, health
//! following readiness, and drain on the stop signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;
use voxwire_proto::service_names;
use voxwire_proto::stt::stt_service_server::SttServiceServer;
use voxwire_proto::tts::tts_service_server::TtsServiceServer;
use voxwire_proto::voxwire::v1::registry_server::RegistryServer;
use voxwire_proto::voxwire::v1::voxwire_server::VoxwireServer;
use voxwire_service::{Drain, Health, ServiceError};

use crate::api::{RegistryApi, VoxwireApi};
use crate::app::Orchestrator;
use crate::auth::Gate;
use crate::config::{Args, ConfigError, Settings};
use crate::discovery;
use crate::relay::{SttRelay, TtsRelay};

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error(transparent)]
    Tls(#[from] voxwire_service::tls::TlsError),
    #[error("server task failed: {0}")]
    Join(String),
}

/// An orchestrator started by [`start`].
pub struct Running {
    pub addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub app: Arc<Orchestrator>,
    task: JoinHandle<Result<(), OrchestratorError>>,
    background: Vec<JoinHandle<()>>,
}

impl Running {
    /// Waits until the server has drained and stopped.
    pub async fn wait(mut self) -> Result<(), OrchestratorError> {
        let result = (&mut self.task)
            .await
            .map_err(|e| OrchestratorError::Join(e.to_string()))?;
        result
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
    }
}

/// Binds both ports, starts discovery and serves until `stop` resolves.
pub async fn start(
    args: &Args,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, OrchestratorError> {
    let settings = Settings::from_args(args)?;
    let (listener, addr) = voxwire_service::bind(&args.listen).await?;
    let (http_listener, _) = voxwire_service::bind(&args.http_listen).await?;
    let drain = Drain::new();
    let app = Orchestrator::new(settings.clone(), drain.clone());
    let http_addr = crate::http::spawn(Arc::clone(&app), http_listener);

    let mut background = discovery::start(app.tts.pool(), &settings.tts, settings.dns_refresh);
    background.extend(discovery::start(
        app.stt.pool(),
        &settings.stt,
        settings.dns_refresh,
    ));
    background.push(tokio::spawn(Arc::clone(&app.registry).expire_loop()));
    background.push(tokio::spawn(Arc::clone(&app).reap_loop()));

    let registry_on = settings.registry.token.is_some();
    let mut services = vec![
        service_names::VOXWIRE,
        service_names::TTS,
        service_names::STT,
    ];
    if registry_on {
        services.push(service_names::REGISTRY);
    }
    let (health, health_service) = Health::new(&services).await;
    background.push(tokio::spawn(follow_readiness(
        Arc::clone(&app),
        health.clone(),
    )));

    // Health and reflection stay open (probes carry no token); every other
    // service passes the gate (token, calls per client).
    let security = &settings.security;
    let gate = Gate::from_settings(security);
    // Workers register with a token of their own, never a client's: a
    // client token must not put an address into the pools.
    let registry_gate = Gate::new(settings.registry.token.clone(), 0);
    let max = security.max_message_bytes;
    // Outside the gates, so refused calls are counted too.
    let grpc = app.metrics.grpc();
    let served = [
        <VoxwireServer<VoxwireApi> as tonic::server::NamedService>::NAME,
        <RegistryServer<RegistryApi> as tonic::server::NamedService>::NAME,
        <TtsServiceServer<TtsRelay> as tonic::server::NamedService>::NAME,
        <SttServiceServer<SttRelay> as tonic::server::NamedService>::NAME,
    ];
    let router = voxwire_service::tls::server_builder(security.tls.as_ref())?
        .add_service(health_service)
        .add_service(voxwire_service::reflection(&served)?)
        .add_service(voxwire_service::reflection_v1alpha(&served)?)
        .add_service(grpc.wrap(gate.guard(
            VoxwireServer::new(VoxwireApi::new(Arc::clone(&app))).max_decoding_message_size(max),
        )))
        .add_service(grpc.wrap(registry_gate.guard(
            RegistryServer::new(RegistryApi::new(Arc::clone(&app))).max_decoding_message_size(max),
        )))
        .add_service(grpc.wrap(gate.guard(
            TtsServiceServer::new(TtsRelay::new(Arc::clone(&app))).max_decoding_message_size(max),
        )))
        .add_service(grpc.wrap(gate.guard(
            SttServiceServer::new(SttRelay::new(Arc::clone(&app))).max_decoding_message_size(max),
        )));
    tracing::info!(
        %addr,
        %http_addr,
        tls = ?security.tls,
        worker_tls = ?settings.endpoint.tls,
        token_required = gate.requires_token(),
        registration = registry_on,
        max_sessions_per_client = security.max_sessions_per_client,
        "orchestrator listening"
    );
    let task = tokio::spawn(async move {
        voxwire_service::serve(router, listener, health, drain, settings.drain, stop)
            .await
            .map_err(OrchestratorError::from)
    });
    Ok(Running {
        addr,
        http_addr,
        app,
        task,
        background,
    })
}

/// Health follows the pools as they change: `""` and the client API are
/// SERVING exactly while the orchestrator is ready (a SERVING worker of each
/// kind in use); each relayed worker service is SERVING while its own pool
/// has a SERVING worker, so `stt.STTService` does not claim to serve with no
/// STT pool behind it. The registry serves whenever the orchestrator does.
async fn follow_readiness(app: Arc<Orchestrator>, health: Health) {
    let mut tts = app.tts.pool().subscribe();
    let mut stt = app.stt.pool().subscribe();
    loop {
        let up = !app.drain.is_draining();
        let ready = up && app.is_ready();
        health.set_service_serving("", ready).await;
        health
            .set_service_serving(service_names::VOXWIRE, ready)
            .await;
        health
            .set_service_serving(service_names::TTS, up && app.tts.pool().any_serving())
            .await;
        health
            .set_service_serving(service_names::STT, up && app.stt.pool().any_serving())
            .await;
        if health.status(service_names::REGISTRY).is_some() {
            health
                .set_service_serving(service_names::REGISTRY, up)
                .await;
        }
        tokio::select! {
            changed = tts.changed() => if changed.is_err() { return },
            changed = stt.changed() => if changed.is_err() { return },
            () = app.drain.started() => {
                // serve() reports NOT_SERVING itself; nothing more to follow.
                return;
            }
        }
    }
}

/// Runs until SIGTERM (then drains and returns).
pub async fn run(args: Args) -> Result<(), OrchestratorError> {
    let running = start(&args, voxwire_service::shutdown_signal()).await?;
    running.wait().await
}
