//! What every voxwire server does the same way, written once: logging to
//! stderr, `grpc.health.v1` with readiness that starts NOT_SERVING, gRPC
//! reflection, and drain on SIGTERM (report NOT_SERVING, refuse new work,
//! finish in-flight work within a bound, exit).
#![forbid(unsafe_code)]

pub mod credentials;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use health::Health;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tonic::transport::server::Router;
pub use tonic_health::pb::health_server::HealthServer;
use voxwire_proto::{Rule, Violation};

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection service: {0}")]
    Reflection(String),
}

/// An error with its causes on one line, for a person: a TLS or connect
/// failure is often only named in the causes. A cause whose text is already
/// there is left out (tonic's errors repeat their source: "tcp connect
/// error: tcp connect error").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A second init (tests start several servers in one process) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The services reflection lists besides a server's own: health and
/// reflection itself, in both the versions clients ask for.
const ALWAYS_LISTED: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

fn reflection_builder(served: &[&str]) -> tonic_reflection::server::Builder<'static> {
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(voxwire_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
    served
        .iter()
        .chain(&ALWAYS_LISTED)
        .fold(builder, |builder, name| builder.with_service_name(*name))
}

/// gRPC reflection (`grpc.reflection.v1`) listing the services this server
/// serves (`served`, fully qualified, e.g. `tts.TTSService`), health and
/// reflection, with every voxwire message type resolvable. A worker's
/// listing must not offer services it does not serve: a client would try
/// them and get UNIMPLEMENTED.
pub fn reflection(
    served: &[&str],
) -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    ServiceError,
> {
    reflection_builder(served)
        .build_v1()
        .map_err(|e| ServiceError::Reflection(e.to_string()))
}

/// The same listing over `grpc.reflection.v1alpha`, which older grpcurl,
/// Postman and evans still ask for.
pub fn reflection_v1alpha(
    served: &[&str],
) -> Result<
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
    ServiceError,
> {
    reflection_builder(served)
        .build_v1alpha()
        .map_err(|e| ServiceError::Reflection(e.to_string()))
}

/// Tracks in-flight work so a drain can refuse new work and wait for the rest.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    inner: Arc<DrainInner>,
}

#[derive(Debug, Default)]
struct DrainInner {
    draining: watch::Sender<bool>,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Held while one unit of work is in flight.
#[derive(Debug)]
pub struct InFlight {
    inner: Arc<DrainInner>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.inner.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

impl Drain {
    pub fn new() -> Self {
        Drain::default()
    }

    /// Admits one unit of work, or refuses it once draining: HEALTH-DRAIN,
    /// whose status (UNAVAILABLE) is the rule's, so no caller picks it.
    pub fn admit(&self) -> Result<InFlight, Violation> {
        if self.is_draining() {
            return Err(Violation::new(
                Rule::HealthDrain,
                "draining: this server takes no new work",
            ));
        }
        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
        Ok(InFlight {
            inner: Arc::clone(&self.inner),
        })
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Resolves when a drain starts.
    pub async fn started(&self) {
        let mut rx = self.inner.draining.subscribe();
        // An error means the sender is gone, which cannot happen while self lives.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Starts draining and waits until nothing is in flight or `bound` passed.
    /// Returns how much was still in flight at the end.
    pub async fn drain(&self, bound: Duration) -> usize {
        self.inner.draining.send_replace(true);
        let wait = async {
            loop {
                let idle = self.inner.idle.notified();
                if self.in_flight() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(bound, wait).await;
        self.in_flight()
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Binds `addr` (port 0 picks a free port; the bound address is returned with
/// the listener so tests and logs know it).
pub async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), ServiceError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServiceError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServiceError::Bind {
        addr: addr.to_string(),
        source,
    })?;
    Ok((listener, local))
}

/// The connections `listener` accepts, with TCP_NODELAY set. Serving a
/// pre-bound listener skips the server builder's own TCP_NODELAY; without
/// it, Nagle holds each small frame back until the previous one is
/// acknowledged, which bunched real-time audio relayed by the orchestrator
/// into bursts (client jitter p95 of 20-27 ms at one session, found by voxbench).
pub fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves `router` on `listener` until `stop` resolves, then drains: NOT_SERVING,
/// new work refused by [`Drain::admit`], in-flight work given `drain_bound`
/// to finish. Open streams that never end on their own (health Watch) do not
/// hold the process: the server is given a moment more, then dropped.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    health: Health,
    drain: Drain,
    drain_bound: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServiceError> {
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drainer = {
        let drain = drain.clone();
        async move {
            stop.await;
            tracing::info!("draining");
            health.set_serving(false).await;
            let left = drain.drain(drain_bound).await;
            if left > 0 {
                tracing::warn!(left, "drain bound reached with work in flight");
            } else {
                tracing::info!("drained");
            }
            let _ = drained_tx.send(());
        }
    };
    let incoming = incoming(listener);
    let server = router.serve_with_incoming_shutdown(incoming, drainer);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result.map_err(ServiceError::from),
        () = async {
            let _ = drained_rx.await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        } => Ok(()),
    }
}

/// Why a gated server stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("start-up failed: {0}")]
    WarmUp(#[source] E),
    #[error("server task failed: {0}")]
    Join(String),
}

/// Serves `router` at once (NOT_SERVING), runs `warm_up` (load the model,
/// run one inference) in the background and reports SERVING when it
/// succeeds; drains when `stop` resolves. A failed warm-up ends the server
/// with that error, so the process exits non-zero rather than sitting
/// NOT_SERVING forever. This is the one start-up sequence of every worker.
pub fn spawn_gated<E>(
    router: Router,
    listener: TcpListener,
    health: Health,
    drain: Drain,
    drain_bound: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
    warm_up: impl Future<Output = Result<(), E>> + Send + 'static,
) -> tokio::task::JoinHandle<Result<(), RunError<E>>>
where
    E: std::error::Error + Send + 'static,
{
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<E>();
    {
        let health = health.clone();
        tokio::spawn(async move {
            match warm_up.await {
                Ok(()) => health.set_serving(true).await,
                Err(error) => {
                    tracing::error!(%error, "start-up failed");
                    let _ = failed_tx.send(error);
                }
            }
        });
    }
    tokio::spawn(async move {
        let serve = serve(router, listener, health, drain, drain_bound, stop);
        tokio::select! {
            result = serve => result.map_err(RunError::from),
            Ok(error) = failed_rx => Err(RunError::WarmUp(error)),
        }
    })
}

/// A server started in the background: its address, its shared state, and
/// the task that ends when it has drained (or its warm-up failed).
pub struct Running<W, E: std::error::Error + 'static> {
    pub addr: SocketAddr,
    pub worker: Arc<W>,
    /// Where `GET /metrics` is served, when it is (`--metrics-listen`).
    pub metrics_addr: Option<SocketAddr>,
    task: tokio::task::JoinHandle<Result<(), RunError<E>>>,
}

impl<W, E: std::error::Error + 'static> Running<W, E> {
    pub fn new(
        addr: SocketAddr,
        worker: Arc<W>,
        task: tokio::task::JoinHandle<Result<(), RunError<E>>>,
    ) -> Self {
        Running {
            addr,
            worker,
            metrics_addr: None,
            task,
        }
    }

    /// The same, serving metrics at `metrics_addr`.
    pub fn with_metrics(mut self, metrics_addr: Option<SocketAddr>) -> Self {
        self.metrics_addr = metrics_addr;
        self
    }

    /// Waits until the server stops (its `stop` future resolved and it
    /// drained), or fails (the warm-up did not succeed).
    pub async fn wait(self) -> Result<(), RunError<E>> {
        self.task.await.map_err(|e| RunError::Join(e.to_string()))?
    }
}

/// Serves `GET /metrics` (Prometheus text format, from `render`) on `addr`
/// until the process ends. A worker's metrics port is optional; failing to
/// bind it is an error the caller reports.
pub async fn serve_metrics(
    addr: &str,
    render: std::sync::Arc<dyn Fn() -> String + Send + Sync>,
) -> Result<SocketAddr, ServiceError> {
    let (listener, local) = bind(addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = std::sync::Arc::clone(&render);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("metrics server failed: {e}");
        }
    });
    Ok(local)
}

/// Serves a worker's metrics at `http://addr/metrics`: its load figures
/// (the GetCapabilities metrics) as gauges named `prefix_key`, then
/// `registry` (the gRPC call counts of [`metrics::GrpcMetrics`]).
pub async fn serve_load_metrics(
    addr: &str,
    prefix: &'static str,
    load: impl Fn() -> std::collections::HashMap<String, f64> + Send + Sync + 'static,
    registry: Arc<metrics::Registry>,
) -> Result<SocketAddr, ServiceError> {
    let bound = serve_metrics(
        addr,
        std::sync::Arc::new(move || {
            let mut figures: Vec<(String, f64)> = load().into_iter().collect();
            figures.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = render_gauges(prefix, figures.iter().map(|(k, v)| (k.as_str(), *v)));
            registry.render(&mut out);
            out
        }),
    )
    .await?;
    tracing::info!(%bound, "metrics listening");
    Ok(bound)
}

/// Renders gauges in Prometheus text format, `prefix_name value` per line,
/// with the help text of the well-known load keys
/// (`voxwire_proto::metrics::help`).
pub fn render_gauges<'a>(prefix: &str, gauges: impl IntoIterator<Item = (&'a str, f64)>) -> String {
    let mut out = String::new();
    for (name, value) in gauges {
        let help = voxwire_proto::metrics::help(name).unwrap_or("A load figure of this worker.");
        out.push_str(&format!(
            "# HELP {prefix}_{name} {help}\n# TYPE {prefix}_{name} gauge\n{prefix}_{name} {value}\n"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let io = Layer {
            text: "Connection refused (os error 111)",
            source: None,
        };
        let repeated = Layer {
            text: "tcp connect error",
            source: Some(Box::new(io)),
        };
        let error = Layer {
            text: "tcp connect error",
            source: Some(Box::new(repeated)),
        };
        assert_eq!(
            error_chain(&error),
            "tcp connect error: Connection refused (os error 111)"
        );
    }

    #[tokio::test]
    async fn drain_refuses_new_work_and_waits_for_old() {
        let drain = Drain::new();
        let held = drain.admit().expect("admitted before drain");
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(held);
        });
        let left = drain.drain(Duration::from_secs(5)).await;
        assert_eq!(left, 0);
        let refused = drain.admit().expect_err("refused while draining");
        assert_eq!(refused.rule, Rule::HealthDrain);
        assert_eq!(refused.to_status().code(), tonic::Code::Unavailable);
        releaser.await.expect("releaser");
    }

    #[tokio::test]
    async fn accepted_connections_have_nodelay_so_nagle_does_not_bunch_frames() {
        use tokio_stream::StreamExt;
        let (listener, addr) = bind("127.0.0.1:0").await.expect("bind");
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let stream = accepted
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(stream.nodelay().expect("nodelay readable"));
    }

    #[tokio::test]
    async fn drain_gives_up_at_its_bound() {
        let drain = Drain::new();
        let _held = drain.admit().expect("admitted");
        let left = drain.drain(Duration::from_millis(20)).await;
        assert_eq!(left, 1);
    }
}
