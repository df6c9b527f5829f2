//! `grpc.health.v1.Health` as the health-checking protocol specifies it,
//! including the part tonic-health leaves out: a Watch on a service this
//! server does not know is answered SERVICE_UNKNOWN and kept open, rather
//! than ended NOT_FOUND. A prober that watches the wrong name then sees why
//! instead of retrying a failed call in a loop.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{self, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// The health of one server: the overall status (`""`) and each served
/// service's own. Every status starts NOT_SERVING, so that no probe passes
/// before the server is ready (tonic-health starts `""` as SERVING).
#[derive(Clone, Debug)]
pub struct Health {
    statuses: Arc<HashMap<String, watch::Sender<ServingStatus>>>,
}

impl Health {
    /// A reporter for `""` and `services` (fully qualified names, e.g.
    /// `tts.TTSService`), and the `grpc.health.v1.Health` service to add to
    /// the router. The set of names is fixed here: a server knows what it
    /// serves when it starts.
    pub async fn new(services: &[&'static str]) -> (Health, HealthServer<HealthService>) {
        let statuses: HashMap<String, watch::Sender<ServingStatus>> = std::iter::once("")
            .chain(services.iter().copied())
            .map(|name| {
                (
                    name.to_string(),
                    watch::Sender::new(ServingStatus::NotServing),
                )
            })
            .collect();
        let health = Health {
            statuses: Arc::new(statuses),
        };
        let server = HealthServer::new(HealthService {
            health: health.clone(),
        });
        (health, server)
    }

    /// Sets `""` and every service at once.
    pub async fn set_serving(&self, serving: bool) {
        for tx in self.statuses.values() {
            publish(tx, serving);
        }
        tracing::info!(serving, "health status");
    }

    /// Sets one service's status (`""` included).
    /// A name this server was not built with is ignored (and logged): its
    /// watchers were told SERVICE_UNKNOWN, and that stays true.
    pub async fn set_service_serving(&self, service: &str, serving: bool) {
        match self.statuses.get(service) {
            Some(tx) => {
                if publish(tx, serving) {
                    tracing::info!(service, serving, "health status");
                }
            }
            None => tracing::warn!(service, "health status set for a service not served"),
        }
    }

    /// The current status of `service`, `None` when it is not served.
    pub fn status(&self, service: &str) -> Option<ServingStatus> {
        self.statuses.get(service).map(|tx| *tx.borrow())
    }
}

/// Sends only a change: Watch promises a message when the status changes,
/// and a repeated SERVING would wake every prober for nothing.
fn publish(tx: &watch::Sender<ServingStatus>, serving: bool) -> bool {
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    tx.send_if_modified(|current| {
        let changed = *current != status;
        *current = status;
        changed
    })
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}

/// The `grpc.health.v1.Health` service over a [`Health`].
#[derive(Debug)]
pub struct HealthService {
    health: Health,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl health_server::Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = request.into_inner().service;
        match self.health.status(&service) {
            Some(status) => Ok(Response::new(response(status))),
            // The protocol's answer to Check on an unknown name.
            None => Err(Status::not_found(format!(
                "this server does not serve {service:?}"
            ))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let service = request.into_inner().service;
        let stream: WatchStream = match self.health.statuses.get(&service) {
            // The current status first, then each change.
            Some(tx) => Box::pin(
                tokio_stream::wrappers::WatchStream::new(tx.subscribe())
                    .map(|status| Ok(response(status))),
            ),
            // The set of served names is fixed at start, so this never
            // becomes known; the call stays open until the client leaves or
            // the server stops, as the protocol asks.
            None => Box::pin(
                tokio_stream::once(Ok(response(ServingStatus::ServiceUnknown)))
                    .chain(tokio_stream::pending()),
            ),
        };
        Ok(Response::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_health::pb::health_server::Health as _;

    use super::*;

    const TTS: &str = "tts.TTSService";

    fn request(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest {
            service: service.to_string(),
        })
    }

    async fn service() -> (Health, HealthService) {
        let (health, _) = Health::new(&[TTS]).await;
        let service = HealthService {
            health: health.clone(),
        };
        (health, service)
    }

    async fn next(stream: &mut WatchStream) -> Option<ServingStatus> {
        let item = tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .ok()??;
        let status = item.expect("a status, not an error").status;
        Some(ServingStatus::try_from(status).expect("a known status"))
    }

    #[tokio::test]
    async fn everything_starts_not_serving() {
        let (health, _) = service().await;
        assert_eq!(health.status(""), Some(ServingStatus::NotServing));
        assert_eq!(health.status(TTS), Some(ServingStatus::NotServing));
    }

    #[tokio::test]
    async fn check_on_an_unknown_service_is_not_found() {
        let (_, service) = service().await;
        let status = service
            .check(request("stt.STTService"))
            .await
            .expect_err("unknown");
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert!(status.message().contains("stt.STTService"), "{status:?}");
    }

    #[tokio::test]
    async fn watch_on_an_unknown_service_says_service_unknown_and_stays_open() {
        let (_, service) = service().await;
        let mut stream = service
            .watch(request("stt.STTService"))
            .await
            .expect("a stream, not NOT_FOUND")
            .into_inner();
        assert_eq!(next(&mut stream).await, Some(ServingStatus::ServiceUnknown));
        // Open: nothing more arrives, and the stream has not ended.
        let more = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        assert!(more.is_err(), "the call ended or sent more: {more:?}");
    }

    #[tokio::test]
    async fn watch_sends_the_status_then_each_change_once() {
        let (health, service) = service().await;
        let mut stream = service
            .watch(request(TTS))
            .await
            .expect("watch")
            .into_inner();
        assert_eq!(next(&mut stream).await, Some(ServingStatus::NotServing));
        health.set_serving(true).await;
        assert_eq!(next(&mut stream).await, Some(ServingStatus::Serving));
        // The same status again is no change: no message.
        health.set_serving(true).await;
        assert_eq!(next(&mut stream).await, None);
        health.set_service_serving(TTS, false).await;
        assert_eq!(next(&mut stream).await, Some(ServingStatus::NotServing));
    }

    #[tokio::test]
    async fn one_service_can_differ_from_the_rest() {
        let (health, service) = service().await;
        health.set_serving(true).await;
        health.set_service_serving(TTS, false).await;
        let overall = service
            .check(request(""))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(overall.status, ServingStatus::Serving as i32);
        let tts = service
            .check(request(TTS))
            .await
            .expect("check")
            .into_inner();
        assert_eq!(tts.status, ServingStatus::NotServing as i32);
    }
}
