//! Health services for the faulty workers: the real one from voxwire-service,
//! or a broken one.

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// How a faulty worker's health service misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthMode {
    /// voxwire-service's health: correct.
    Real,
    /// SERVING for any name, even services the worker does not have.
    AlwaysServing,
    /// No health service at all (UNIMPLEMENTED), like the Python fleet.
    Absent,
    /// Watch answers like Check: one message, then the stream ends.
    WatchNotStreaming,
}

#[derive(Debug, Clone)]
pub struct BrokenHealth {
    pub mode: HealthMode,
    pub names: Vec<&'static str>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for BrokenHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let name = request.into_inner().service;
        if self.mode != HealthMode::AlwaysServing && !self.names.contains(&name.as_str()) {
            return Err(Status::not_found(format!("no service {name:?}")));
        }
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let answer = self.check(request).await?.into_inner();
        let once = tokio_stream::once(Ok(answer));
        if self.mode == HealthMode::WatchNotStreaming {
            return Ok(Response::new(Box::pin(once)));
        }
        // Current status, then nothing changes: the stream stays open.
        let open = tokio_stream::StreamExt::chain(once, tokio_stream::pending());
        Ok(Response::new(Box::pin(open)))
    }
}

pub fn broken(mode: HealthMode, names: &[&'static str]) -> Option<HealthServer<BrokenHealth>> {
    match mode {
        HealthMode::Real | HealthMode::Absent => None,
        HealthMode::AlwaysServing | HealthMode::WatchNotStreaming => {
            let mut all = vec![""];
            all.extend_from_slice(names);
            Some(HealthServer::new(BrokenHealth { mode, names: all }))
        }
    }
}
