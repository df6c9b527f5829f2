//! The HTTP side port: /metrics, /healthz, /readyz, GET /api/workers and
//! the web console ([`crate::web`]: the page at `/`, `/ws`,
//! `/api/workers/events`), and the OpenAI-compatible audio API under `/v1`
//! ([`crate::openai`], unless `--openai-api false`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;

use crate::app::Orchestrator;
use crate::endpoint::EndpointSnapshot;

/// Every route of the side port is assembled here, so a layer added here
/// (authentication, say) covers all of them.
pub fn router(app: Arc<Orchestrator>) -> Router {
    let openai = if app.settings.openai.enabled {
        crate::openai::routes(&app.settings)
    } else {
        Router::new()
    };
    Router::new()
        .merge(crate::auth::guard_console(
            crate::web::routes(),
            &app.settings.security,
        ))
        .merge(openai)
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/api/workers", get(workers))
        .with_state(app)
}

async fn metrics(State(app): State<Arc<Orchestrator>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
}

async fn readyz(State(app): State<Arc<Orchestrator>>) -> impl IntoResponse {
    if app.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: some configured kind has no SERVING worker\n",
        )
    }
}

async fn workers(State(app): State<Arc<Orchestrator>>) -> Json<Vec<EndpointSnapshot>> {
    Json(crate::web::workers(&app))
}

/// Serves the side port on `listener` until the process ends: HTTP/1.1
/// (WebSocket upgrades included), at most `--http-max-connections` at once,
/// each closed when its request headers take longer than
/// `--http-header-read-timeout-ms`. (axum::serve has neither: half-sent
/// requests piled up until the process ran out of file descriptors, and the
/// gRPC port with it.)
pub fn spawn(app: Arc<Orchestrator>, listener: TcpListener) -> SocketAddr {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let limits = app.settings.http;
    let routes = router(app);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            // Wait for room before accepting: past the cap, connections
            // wait in the kernel's backlog instead of holding descriptors.
            let Ok(permit) = Arc::clone(&connections).acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors, most likely: give some back first.
                    tracing::warn!(%error, "HTTP side port: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            // The peer address is what per-client limits count by.
            let service = hyper_util::service::TowerToHyperService::new(
                routes
                    .clone()
                    .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
            );
            tokio::spawn(async move {
                let _permit = permit;
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades();
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "HTTP side port connection ended");
                }
            });
        }
    });
    local
}
