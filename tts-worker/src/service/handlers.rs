//! The RPCs of `tts.TTSService`: sessions, Synthesize (handed to a
//! `Call`), control, models and capabilities.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use voxwire_proto::session::validate_session_id;
use voxwire_proto::tts::tts_service_server::TtsService;
use voxwire_proto::tts::{
    AudioFrame, Capabilities, ControlCommand, ControlRequest, ControlResponse, EndSessionRequest,
    EndSessionResponse, GetCapabilitiesRequest, GetCapabilitiesResponse, ListModelsRequest,
    ListModelsResponse, LoadModelRequest, LoadModelResponse, StartSessionRequest,
    StartSessionResponse, TextChunk, UnloadModelRequest, UnloadModelResponse,
};
use voxwire_proto::tts_stream::empty_call_reply;
use voxwire_proto::{Rule, Violation};

use super::call::{read_text, Call, FRAME_BUFFER};
use super::{lock, Session, TtsWorker};
use crate::engine::EngineError;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn engine_status(error: EngineError) -> Status {
    match error {
        EngineError::UnknownModel(id) => {
            Violation::new(Rule::TtsModelUnknown, format!("no model {id:?}")).to_status()
        }
        other => Status::internal(other.to_string()),
    }
}

/// The service handle tonic serves.
#[derive(Clone)]
pub struct TtsServiceImpl {
    worker: Arc<TtsWorker>,
}

impl TtsServiceImpl {
    pub fn new(worker: Arc<TtsWorker>) -> Self {
        TtsServiceImpl { worker }
    }
}

type FrameStream = ReceiverStream<Result<AudioFrame, Status>>;

#[tonic::async_trait]
impl TtsService for TtsServiceImpl {
    async fn start_session(
        &self,
        request: Request<StartSessionRequest>,
    ) -> Result<Response<StartSessionResponse>, Status> {
        let request = request.into_inner();
        validate_session_id(&request.session_id)?;
        let _admitted = self.worker.refuse_unless_serving()?;
        let model_id = if request.model_id.is_empty() {
            self.worker.config.default_model.clone()
        } else {
            request.model_id.clone()
        };
        if self.worker.catalogue.get(&model_id).is_none() {
            return Err(Violation::new(
                Rule::TtsModelUnknown,
                format!("no model {model_id:?}; ListModels names the ones there are"),
            )
            .into());
        }
        // Checked before loading (which can be slow) and again when inserting.
        self.check_room(&request.session_id)?;
        let voice = self
            .worker
            .load_model(&model_id)
            .await
            .map_err(engine_status)?;
        let mut sessions = lock(&self.worker.sessions);
        self.check_room_locked(&sessions, &request.session_id)?;
        sessions.insert(
            request.session_id.clone(),
            Arc::new(Session {
                model_id: model_id.clone(),
                voice: RwLock::new(voice),
                paused: watch::channel(false).0,
                stops: watch::channel(0).0,
                last_used: Mutex::new(Instant::now()),
                calls: AtomicUsize::new(0),
            }),
        );
        tracing::info!(session = %request.session_id, model = %model_id, "session started");
        Ok(Response::new(StartSessionResponse {
            success: true,
            message: format!("session started with model {model_id}"),
        }))
    }

    async fn end_session(
        &self,
        request: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        let id = request.into_inner().session_id;
        if let Some(session) = lock(&self.worker.sessions).remove(&id) {
            // A call still running on the session ends with its final frame.
            session.stops.send_modify(|n| *n += 1);
            tracing::info!(session = %id, "session ended");
        }
        Ok(Response::new(EndSessionResponse { success: true }))
    }

    type SynthesizeStream = FrameStream;

    async fn synthesize(
        &self,
        request: Request<Streaming<TextChunk>>,
    ) -> Result<Response<Self::SynthesizeStream>, Status> {
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(FRAME_BUFFER);
        let Some(first) = input.message().await? else {
            let _ = tx.send(Ok(empty_call_reply())).await;
            return Ok(Response::new(ReceiverStream::new(rx)));
        };
        let session = self.worker.session(&first.session_id)?;
        let in_flight = self.worker.drain.admit()?;
        session.touch();
        let (sentence_tx, sentence_rx) = mpsc::channel(16);
        tokio::spawn(read_text(
            input,
            first.clone(),
            self.worker.config.max_text_chars,
            sentence_tx,
        ));
        // Subscribed here, before the call is spawned, so a STOP sent as soon
        // as the call is admitted is not missed.
        let mut stops = session.stops.subscribe();
        stops.borrow_and_update();
        let call = Call {
            worker: Arc::clone(&self.worker),
            stops,
            session,
            session_id: first.session_id,
            out: tx,
            _in_flight: in_flight,
        };
        tokio::spawn(call.run(sentence_rx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn control(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<ControlResponse>, Status> {
        let request = request.into_inner();
        let session = self.worker.session(&request.session_id)?;
        session.touch();
        let command = ControlCommand::try_from(request.command).map_err(|_| {
            Status::invalid_argument(format!("unknown control command {}", request.command))
        })?;
        let message = match command {
            ControlCommand::Pause => {
                session.paused.send_replace(true);
                "paused"
            }
            ControlCommand::Resume => {
                session.paused.send_replace(false);
                "resumed"
            }
            ControlCommand::Stop => {
                session.stops.send_modify(|n| *n += 1);
                session.paused.send_replace(false);
                "stopped"
            }
            ControlCommand::Reload => {
                let voice = self
                    .worker
                    .load_fresh(&session.model_id)
                    .await
                    .map_err(engine_status)?;
                self.worker
                    .loaded
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(session.model_id.clone(), Arc::clone(&voice));
                *session.voice.write().unwrap_or_else(|e| e.into_inner()) = voice;
                "reloaded"
            }
        };
        tracing::info!(session = %request.session_id, command = message, "control");
        Ok(Response::new(ControlResponse {
            success: true,
            message: message.to_string(),
            timestamp_ms: now_ms(),
        }))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        let models = self
            .worker
            .catalogue
            .ids()
            .map(|id| self.worker.model_info(id))
            .collect();
        Ok(Response::new(ListModelsResponse { models }))
    }

    async fn load_model(
        &self,
        request: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelResponse>, Status> {
        let id = request.into_inner().model_id;
        let started = Instant::now();
        let already = self.worker.loaded_voice(&id).is_some();
        self.worker.load_model(&id).await.map_err(engine_status)?;
        Ok(Response::new(LoadModelResponse {
            success: true,
            message: if already { "already loaded" } else { "loaded" }.to_string(),
            load_duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        }))
    }

    async fn unload_model(
        &self,
        request: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelResponse>, Status> {
        let id = request.into_inner().model_id;
        if self.worker.catalogue.get(&id).is_none() {
            return Err(engine_status(EngineError::UnknownModel(id)));
        }
        let removed = self
            .worker
            .loaded
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .is_some();
        // Open sessions keep their own reference and go on speaking.
        Ok(Response::new(UnloadModelResponse {
            success: true,
            message: if removed {
                "unloaded"
            } else {
                "was not loaded"
            }
            .to_string(),
        }))
    }

    async fn get_capabilities(
        &self,
        _request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        let loaded = self.worker.loaded.read().unwrap_or_else(|e| e.into_inner());
        let mut languages: Vec<String> = loaded
            .values()
            .flat_map(|v| v.info().languages.clone())
            .collect();
        languages.sort();
        languages.dedup();
        let resident_models = loaded.keys().cloned().collect();
        drop(loaded);
        Ok(Response::new(GetCapabilitiesResponse {
            capabilities: Some(Capabilities {
                streaming: true,
                zero_shot: false,
                lora: false,
                cpu_ok: true,
                languages,
                emotive_zero_prompt: false,
                max_concurrent_sessions: i32::try_from(self.worker.config.max_sessions)
                    .unwrap_or(i32::MAX),
            }),
            resident_models,
            metrics: self.worker.load_metrics(),
        }))
    }
}

impl TtsServiceImpl {
    fn check_room(&self, id: &str) -> Result<(), Status> {
        self.check_room_locked(&lock(&self.worker.sessions), id)
    }

    fn check_room_locked(
        &self,
        sessions: &HashMap<String, Arc<Session>>,
        id: &str,
    ) -> Result<(), Status> {
        if sessions.contains_key(id) {
            return Err(Violation::new(
                Rule::TtsSessionDuplicate,
                format!("session {id:?} is already open"),
            )
            .into());
        }
        if sessions.len() >= self.worker.config.max_sessions {
            return Err(Violation::new(
                Rule::TtsCapacity,
                format!(
                    "{} sessions open, the limit is {}",
                    sessions.len(),
                    self.worker.config.max_sessions
                ),
            )
            .into());
        }
        Ok(())
    }
}
