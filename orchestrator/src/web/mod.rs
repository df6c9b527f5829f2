//! The web console: a page served from the HTTP side port that speaks,
//! listens and shows the worker pools, with no separate front-end build.
//!
//! - the page itself (`orchestrator/web/`: plain HTML, CSS and JavaScript
//!   modules, embedded in the binary and served compressed);
//! - `GET /ws`: one WebSocket per page session, bridged to the same
//!   conversation core as the gRPC `Converse` API ([`ws`]);
//! - `GET /api/workers/events`: the worker table as server-sent events, sent
//!   again whenever a pool changes (the page gets the same over its socket).

pub mod ws;

use std::convert::Infallible;
use std::sync::Arc;

use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;
use tokio_stream::Stream;
use tower_http::compression::CompressionLayer;

use crate::app::Orchestrator;
use crate::endpoint::EndpointSnapshot;

/// One embedded file of the page.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/app.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../web/style.css"),
    },
    Asset {
        path: "/capture-worklet.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/capture-worklet.js"),
    },
    Asset {
        path: "/playback-worklet.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/playback-worklet.js"),
    },
    Asset {
        path: "/resampler.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../web/resampler.js"),
    },
];

/// The console's routes: the page (compressed), its WebSocket and the
/// workers' event stream.
pub fn routes() -> Router<Arc<Orchestrator>> {
    let mut page = Router::new();
    for asset in ASSETS {
        let (content_type, body) = (asset.content_type, asset.body);
        page = page.route(
            asset.path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
                        // The page is part of the binary: a new build must
                        // not be mixed with a cached older script.
                        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                    ],
                    body,
                )
                    .into_response()
            }),
        );
    }
    page.layer(CompressionLayer::new())
        .route("/ws", get(ws::upgrade))
        .route("/api/workers/events", get(worker_events))
}

/// Every endpoint of both pools, TTS first.
pub fn workers(app: &Orchestrator) -> Vec<EndpointSnapshot> {
    app.pools()
        .iter()
        .flat_map(|pool| pool.snapshot())
        .collect()
}

/// Wakes on any change of either pool (membership, state, load, in-flight
/// turns): the pools' own change notifications, never a poll.
pub struct PoolChanges {
    tts: watch::Receiver<u64>,
    stt: watch::Receiver<u64>,
}

impl PoolChanges {
    pub fn new(app: &Orchestrator) -> PoolChanges {
        PoolChanges {
            tts: app.tts.pool().subscribe(),
            stt: app.stt.pool().subscribe(),
        }
    }

    /// Resolves at the next change; `false` once the pools are gone.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            changed = self.tts.changed() => changed.is_ok(),
            changed = self.stt.changed() => changed.is_ok(),
        }
    }
}

/// The table now, then again after every change that alters it.
pub(crate) fn worker_updates(app: Arc<Orchestrator>) -> impl Stream<Item = Vec<EndpointSnapshot>> {
    let changes = PoolChanges::new(&app);
    futures_util::stream::unfold(
        (app, changes, None::<String>),
        |(app, mut changes, mut last)| async move {
            loop {
                if last.is_some() && !changes.changed().await {
                    return None;
                }
                let table = workers(&app);
                // Load polls wake the pools even when nothing moved.
                let text = serde_json::to_string(&table).unwrap_or_default();
                if last.as_ref() != Some(&text) {
                    last = Some(text);
                    return Some((table, (app, changes, last)));
                }
            }
        },
    )
}

async fn worker_events(
    axum::extract::State(app): axum::extract::State<Arc<Orchestrator>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    use tokio_stream::StreamExt;
    let events = worker_updates(app).map(|table| {
        Ok(Event::default()
            .event("workers")
            .data(serde_json::to_string(&table).unwrap_or_default()))
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
