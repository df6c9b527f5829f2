//! `tts.TTSService` and `stt.STTService` served by the orchestrator itself,
//! relaying to its pools, so any worker client can point at it.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use voxwire_proto::rules::{Rule, Violation};
use voxwire_proto::session::validate_session_id;
use voxwire_proto::stt::stt_service_client::SttServiceClient;
use voxwire_proto::stt::stt_service_server::SttService;
use voxwire_proto::stt::{self, RecognizeRequest, TranscriptEvent};
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::tts_service_server::TtsService;
use voxwire_proto::tts::*;
use voxwire_proto::tts_stream::{check_chunk_session, empty_call_reply};

use crate::api::{
    client_stream_error, first_request, idle_stream, recognize_stream, speak_stream, TextSource,
};
use crate::app::Orchestrator;
use crate::pool::Pool;
use crate::sessions::{CreateError, Opener};
use crate::trace::TraceContext;

#[derive(Clone)]
pub struct TtsRelay {
    app: Arc<Orchestrator>,
}

impl TtsRelay {
    pub fn new(app: Arc<Orchestrator>) -> Self {
        TtsRelay { app }
    }

    fn unknown(id: &str) -> Status {
        Violation::new(
            Rule::TtsSessionUnknown,
            format!("session {id:?} is not open"),
        )
        .to_status()
    }
}

/// A channel to some SERVING worker, for calls that are not a turn.
async fn any_worker(app: &Orchestrator, pool: &Pool) -> Result<Channel, Status> {
    Ok(pool.any_channel(app.settings.dispatch.ready_wait).await?)
}

fn with_deadline<T>(app: &Orchestrator, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(app.settings.dispatch.call_timeout);
    request
}

#[tonic::async_trait]
impl TtsService for TtsRelay {
    async fn start_session(
        &self,
        request: Request<StartSessionRequest>,
    ) -> Result<Response<StartSessionResponse>, Status> {
        let trace = TraceContext::from_metadata(request.metadata());
        let owner = request.remote_addr().map(|a| a.ip());
        let request = request.into_inner();
        validate_session_id(&request.session_id)?;
        let _admitted = self.app.admit()?;
        let opener = Opener {
            owner,
            ..Opener::default()
        };
        let session = self
            .app
            .sessions
            .create(
                &request.session_id,
                &request.model_id,
                request.options,
                opener,
            )
            .map_err(|error| match error {
                CreateError::AlreadyOpen => Violation::new(
                    Rule::TtsSessionDuplicate,
                    format!("session {:?} is already open", request.session_id),
                )
                .to_status(),
                other => other.to_status(),
            })?;
        let mut binding = session.tts.lock().await;
        if let Err(status) = self.app.tts.open_session(&mut binding, &trace).await {
            drop(binding);
            self.app.sessions.remove(&request.session_id);
            return Err(status);
        }
        Ok(Response::new(StartSessionResponse {
            success: true,
            message: format!(
                "session started on {}",
                binding.endpoint.as_deref().unwrap_or("?")
            ),
        }))
    }

    async fn end_session(
        &self,
        request: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        let id = request.into_inner().session_id;
        if let Some(session) = self.app.sessions.remove(&id) {
            let mut binding = session.tts.lock().await;
            self.app.tts.close_session(&mut binding).await;
        }
        Ok(Response::new(EndSessionResponse { success: true }))
    }

    type SynthesizeStream = ReceiverStream<Result<AudioFrame, Status>>;

    async fn synthesize(
        &self,
        request: Request<Streaming<TextChunk>>,
    ) -> Result<Response<Self::SynthesizeStream>, Status> {
        let trace = TraceContext::from_metadata(request.metadata());
        let mut input = request.into_inner();
        let Some(first) = input.message().await? else {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.send(Ok(empty_call_reply())).await;
            return Ok(Response::new(ReceiverStream::new(rx)));
        };
        let session = self
            .app
            .sessions
            .get(&first.session_id)
            .ok_or_else(|| Self::unknown(&first.session_id))?;
        // The rest of the text goes to the worker as it arrives: a worker
        // that starts early answers early (TTS-STREAM-EARLY), one that starts
        // at the end of input gets the same chunks.
        let session_id = first.session_id.clone();
        let (rest_tx, rest) = tokio::sync::mpsc::channel(16);
        let idle = self.app.settings.stream_idle;
        if !first.is_final {
            tokio::spawn(async move {
                loop {
                    let Ok(next) = tokio::time::timeout(idle, input.message()).await else {
                        let _ = rest_tx.send(Err(idle_stream(idle, "text"))).await;
                        return;
                    };
                    let item = match next {
                        Ok(Some(chunk)) => check_chunk_session(Some(&session_id), &chunk)
                            .map(|()| chunk)
                            .map_err(|violation| violation.to_status()),
                        // Half-close: the end of input.
                        Ok(None) => return,
                        Err(status) => Err(client_stream_error(status)),
                    };
                    let last = item.as_ref().map_or(true, |chunk| chunk.is_final);
                    if rest_tx.send(item).await.is_err() || last {
                        return;
                    }
                }
            });
        }
        let source = TextSource::Streaming { first, rest };
        let stream = speak_stream(Arc::clone(&self.app), session, source, trace)?;
        Ok(Response::new(stream))
    }

    async fn control(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<ControlResponse>, Status> {
        let request = request.into_inner();
        let session = self
            .app
            .sessions
            .get(&request.session_id)
            .ok_or_else(|| Self::unknown(&request.session_id))?;
        // The binding is locked for a whole turn; STOP must reach that very
        // turn, so read the worker from the session's published copy.
        let channel = session
            .worker()
            .and_then(|address| self.app.tts.pool().endpoint(&address))
            .and_then(|e| e.channel());
        match channel {
            Some(channel) => Ok(TtsServiceClient::new(channel)
                .control(with_deadline(&self.app, request))
                .await?),
            None => Ok(Response::new(ControlResponse {
                success: true,
                message: "no synthesis running on this session".to_string(),
                timestamp_ms: 0,
            })),
        }
    }

    async fn list_models(
        &self,
        request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let channel = any_worker(&self.app, self.app.tts.pool()).await?;
        TtsServiceClient::new(channel)
            .list_models(with_deadline(&self.app, request.into_inner()))
            .await
    }

    async fn load_model(
        &self,
        request: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelResponse>, Status> {
        let channel = any_worker(&self.app, self.app.tts.pool()).await?;
        TtsServiceClient::new(channel)
            .load_model(with_deadline(&self.app, request.into_inner()))
            .await
    }

    async fn unload_model(
        &self,
        request: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelResponse>, Status> {
        let channel = any_worker(&self.app, self.app.tts.pool()).await?;
        TtsServiceClient::new(channel)
            .unload_model(with_deadline(&self.app, request.into_inner()))
            .await
    }

    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        let channel = any_worker(&self.app, self.app.tts.pool()).await?;
        TtsServiceClient::new(channel)
            .get_capabilities(with_deadline(&self.app, request.into_inner()))
            .await
    }
}

#[derive(Clone)]
pub struct SttRelay {
    app: Arc<Orchestrator>,
}

impl SttRelay {
    pub fn new(app: Arc<Orchestrator>) -> Self {
        SttRelay { app }
    }
}

#[tonic::async_trait]
impl SttService for SttRelay {
    type RecognizeStream = ReceiverStream<Result<TranscriptEvent, Status>>;

    async fn recognize(
        &self,
        request: Request<Streaming<RecognizeRequest>>,
    ) -> Result<Response<Self::RecognizeStream>, Status> {
        let trace = TraceContext::from_metadata(request.metadata());
        let mut input = request.into_inner();
        let first = first_request(&mut input, self.app.settings.stream_idle).await?;
        let stream = recognize_stream(Arc::clone(&self.app), first, input, trace)?;
        Ok(Response::new(stream))
    }

    async fn get_capabilities(
        &self,
        request: Request<stt::GetCapabilitiesRequest>,
    ) -> Result<Response<stt::GetCapabilitiesResponse>, Status> {
        let channel = any_worker(&self.app, self.app.stt.pool()).await?;
        SttServiceClient::new(channel)
            .get_capabilities(with_deadline(&self.app, request.into_inner()))
            .await
    }
}
