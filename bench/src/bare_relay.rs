//! The floor any relay pays: a tonic `tts.TTSService` that forwards every
//! call to one upstream worker with no logic at all (no sessions, no
//! validation, no retries, no metrics). The orchestrator's relay throughput
//! is compared to this one's in the same run.

use std::net::SocketAddr;

use tokio_stream::StreamExt;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::tts_service_server::{TtsService, TtsServiceServer};
use voxwire_proto::tts::*;

use crate::error::{BenchError, Result};

#[derive(Clone)]
pub struct BareRelay {
    upstream: TtsServiceClient<Channel>,
}

#[tonic::async_trait]
impl TtsService for BareRelay {
    async fn start_session(
        &self,
        request: Request<StartSessionRequest>,
    ) -> std::result::Result<Response<StartSessionResponse>, Status> {
        self.upstream
            .clone()
            .start_session(request.into_inner())
            .await
    }

    async fn end_session(
        &self,
        request: Request<EndSessionRequest>,
    ) -> std::result::Result<Response<EndSessionResponse>, Status> {
        self.upstream
            .clone()
            .end_session(request.into_inner())
            .await
    }

    type SynthesizeStream = Streaming<AudioFrame>;

    async fn synthesize(
        &self,
        request: Request<Streaming<TextChunk>>,
    ) -> std::result::Result<Response<Self::SynthesizeStream>, Status> {
        // The client's chunks straight up, the worker's frames straight back.
        let chunks = request.into_inner().map_while(|chunk| chunk.ok());
        self.upstream.clone().synthesize(chunks).await
    }

    async fn control(
        &self,
        request: Request<ControlRequest>,
    ) -> std::result::Result<Response<ControlResponse>, Status> {
        self.upstream.clone().control(request.into_inner()).await
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> std::result::Result<Response<ListModelsResponse>, Status> {
        self.upstream
            .clone()
            .list_models(request.into_inner())
            .await
    }

    async fn load_model(
        &self,
        request: Request<LoadModelRequest>,
    ) -> std::result::Result<Response<LoadModelResponse>, Status> {
        self.upstream.clone().load_model(request.into_inner()).await
    }

    async fn unload_model(
        &self,
        request: Request<UnloadModelRequest>,
    ) -> std::result::Result<Response<UnloadModelResponse>, Status> {
        self.upstream
            .clone()
            .unload_model(request.into_inner())
            .await
    }

    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> std::result::Result<Response<GetCapabilitiesResponse>, Status> {
        self.upstream
            .clone()
            .get_capabilities(request.into_inner())
            .await
    }
}

/// Serves the bare relay on `listen` (with grpc.health.v1, SERVING) until
/// the process is killed.
pub async fn serve(listen: &str, upstream: &str) -> Result<()> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| BenchError::Setup(format!("--listen {listen:?}: {e}")))?;
    let channel = Channel::from_shared(format!("http://{upstream}"))
        .map_err(|e| BenchError::Setup(format!("--upstream {upstream:?}: {e}")))?
        .connect()
        .await?;
    let (_reporter, health) = tonic_health::server::health_reporter();
    Server::builder()
        .add_service(health)
        .add_service(TtsServiceServer::new(BareRelay {
            upstream: TtsServiceClient::new(channel),
        }))
        .serve(addr)
        .await?;
    Ok(())
}
