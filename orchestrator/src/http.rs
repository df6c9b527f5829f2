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

/// Serves the side port on `listener` until the process ends.
pub fn spawn(app: Arc<Orchestrator>, listener: TcpListener) -> SocketAddr {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    tokio::spawn(async move {
        // The peer address is what per-client limits count by.
        let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
        if let Err(error) = axum::serve(listener, service).await {
            tracing::error!(%error, "HTTP side port failed");
        }
    });
    local
}
