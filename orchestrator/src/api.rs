//! `voxwire.v1.Voxwire` (Speak, Transcribe, Converse) and `voxwire.v1.Registry`.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use voxwire_proto::session::validate_session_id;
use voxwire_proto::stt::{recognize_request, RecognizeRequest, TranscriptEvent};
use voxwire_proto::stt_stream::SttRequestValidator;
use voxwire_proto::tts::{AudioFrame, TextChunk};
use voxwire_proto::voxwire::v1::registry_server::Registry;
use voxwire_proto::voxwire::v1::voxwire_server::Voxwire;
use voxwire_proto::voxwire::v1::{
    ConverseEvent, ConverseRequest, RegisterRequest, RegisterResponse, SpeakRequest,
};

use crate::app::Orchestrator;
use crate::converse;
use crate::sessions::{new_session_id, ClientSession};
use crate::trace::TraceContext;
use crate::tts_dispatch::TextFeed;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[derive(Clone)]
pub struct VoxwireApi {
    app: Arc<Orchestrator>,
}

impl VoxwireApi {
    pub fn new(app: Arc<Orchestrator>) -> Self {
        VoxwireApi { app }
    }
}

/// The text of a turn: whole (Speak), or a relayed Synthesize's first chunk
/// and the rest as the client sends it.
pub enum TextSource {
    Whole(String),
    Streaming {
        first: TextChunk,
        rest: mpsc::Receiver<Result<TextChunk, Status>>,
    },
}

/// Streams one TTS turn of `session` to the client; the turn's error, if
/// any, ends the stream after the frames already sent.
pub fn speak_stream(
    app: Arc<Orchestrator>,
    session: Arc<ClientSession>,
    source: TextSource,
    trace: TraceContext,
) -> Result<ReceiverStream<Result<AudioFrame, Status>>, Status> {
    let admitted = app.admit()?;
    let (tx, rx) = mpsc::channel(32);
    tokio::spawn(async move {
        let _admitted = admitted;
        let (frames_tx, frames_rx) = mpsc::channel(16);
        let turn = async {
            let frames_tx = frames_tx;
            match source {
                TextSource::Whole(text) => {
                    let mut feed = TextFeed::whole(&session.id, &text);
                    app.tts_turn(&session, &mut feed, &trace, &frames_tx).await
                }
                TextSource::Streaming { first, mut rest } => {
                    let mut feed = TextFeed::streaming(first, &mut rest);
                    app.tts_turn(&session, &mut feed, &trace, &frames_tx).await
                }
            }
        };
        // Owns the receiver: when the client goes away the loop ends and the
        // receiver is dropped with it, so the turn's next send fails and it
        // stops (holding it here would block the turn, and the session, forever).
        let client = tx.clone();
        let forward = async move {
            let mut frames_rx = frames_rx;
            while let Some(frame) = frames_rx.recv().await {
                if client.send(Ok(frame)).await.is_err() {
                    break;
                }
            }
        };
        let (result, ()) = tokio::join!(turn, forward);
        if let Err(status) = result {
            let _ = tx.send(Err(status)).await;
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Relays one Recognize stream whose first request (the config) was read:
/// requests validated as they come, events out. `input` is the rest of the
/// client's stream (a gRPC call's, or the audio of an uploaded file).
pub fn recognize_stream(
    app: Arc<Orchestrator>,
    first: RecognizeRequest,
    input: impl Stream<Item = Result<RecognizeRequest, Status>> + Send + 'static,
    trace: TraceContext,
) -> Result<ReceiverStream<Result<TranscriptEvent, Status>>, Status> {
    let mut validator = SttRequestValidator::new(app.settings.security.audio);
    validator.accept(&first)?;
    let Some(recognize_request::Request::Config(config)) = first.request else {
        return Err(Status::invalid_argument(
            "STT-CONFIG-FIRST: the first request must carry config",
        ));
    };
    let admitted = app.admit()?;
    let (tx, rx) = mpsc::channel(32);
    let span =
        tracing::info_span!("session", session = %config.session_id, trace_id = %trace.trace_id);
    trace.adopt(&span);
    tokio::spawn(
        async move {
            let _admitted = admitted;
            let (requests_tx, mut requests_rx) = mpsc::channel(64);
            let (events_tx, events_rx) = mpsc::channel(64);
            let reader = async move {
                let mut input = std::pin::pin!(input);
                loop {
                    match input.next().await {
                        Some(Ok(request)) => {
                            validator.accept(&request)?;
                            if requests_tx.send(request).await.is_err() {
                                return Ok(());
                            }
                        }
                        None => {
                            validator.half_closed()?;
                            return Ok(());
                        }
                        Some(Err(status)) => {
                            return Err(Status::cancelled(format!("client stream: {status}")))
                        }
                    }
                }
            };
            let relay = async {
                let events_tx = events_tx;
                app.stt
                    .recognize(config, &mut requests_rx, &trace, &events_tx)
                    .await
            };
            // Owns the receiver, for the same reason as in speak_stream.
            let client = tx.clone();
            let forward = async move {
                let mut events_rx = events_rx;
                while let Some(event) = events_rx.recv().await {
                    if client.send(Ok(event)).await.is_err() {
                        break;
                    }
                }
            };
            let run = async {
                tokio::pin!(reader);
                tokio::pin!(relay);
                let mut reading = true;
                loop {
                    tokio::select! {
                        result = &mut relay => return result,
                        result = &mut reader, if reading => {
                            reading = false;
                            // A client that broke a rule ends the relay with its status.
                            result?;
                        }
                    }
                }
            };
            let (result, ()) = tokio::join!(run, forward);
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        }
        .instrument(span),
    );
    Ok(ReceiverStream::new(rx))
}

/// Reads the first request of a Recognize stream.
pub async fn first_request(
    input: &mut Streaming<RecognizeRequest>,
) -> Result<RecognizeRequest, Status> {
    input.message().await?.ok_or_else(|| {
        Status::invalid_argument("STT-CONFIG-FIRST: the stream closed before any config")
    })
}

#[tonic::async_trait]
impl Voxwire for VoxwireApi {
    type SpeakStream = ReceiverStream<Result<AudioFrame, Status>>;

    async fn speak(
        &self,
        request: Request<SpeakRequest>,
    ) -> Result<Response<Self::SpeakStream>, Status> {
        let trace = TraceContext::from_metadata(request.metadata());
        let request = request.into_inner();
        // Refused here, before a worker is involved (--max-text-chars).
        voxwire_proto::tts_stream::check_text_limit(
            request.text.chars().count(),
            self.app.settings.security.max_text_chars,
        )?;
        let id = if request.session_id.is_empty() {
            new_session_id()
        } else {
            validate_session_id(&request.session_id)?;
            request.session_id
        };
        let session = self
            .app
            .sessions
            .get_or_create(&id, &request.model_id, request.options);
        let stream = speak_stream(
            Arc::clone(&self.app),
            session,
            TextSource::Whole(request.text),
            trace,
        )?;
        Ok(Response::new(stream))
    }

    type TranscribeStream = ReceiverStream<Result<TranscriptEvent, Status>>;

    async fn transcribe(
        &self,
        request: Request<Streaming<RecognizeRequest>>,
    ) -> Result<Response<Self::TranscribeStream>, Status> {
        let trace = TraceContext::from_metadata(request.metadata());
        let mut input = request.into_inner();
        let first = first_request(&mut input).await?;
        let stream = recognize_stream(Arc::clone(&self.app), first, input, trace)?;
        Ok(Response::new(stream))
    }

    type ConverseStream = BoxStream<ConverseEvent>;

    async fn converse(
        &self,
        request: Request<Streaming<ConverseRequest>>,
    ) -> Result<Response<Self::ConverseStream>, Status> {
        let trace = TraceContext::from_metadata(request.metadata());
        let opened = converse::open(Arc::clone(&self.app), request.into_inner(), trace).await?;
        Ok(Response::new(Box::pin(opened.events)))
    }
}

#[derive(Clone)]
pub struct RegistryApi {
    app: Arc<Orchestrator>,
}

impl RegistryApi {
    pub fn new(app: Arc<Orchestrator>) -> Self {
        RegistryApi { app }
    }
}

#[tonic::async_trait]
impl Registry for RegistryApi {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        let lease = self
            .app
            .registry
            .register(&request.kind, &request.address, request.lease_seconds)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(RegisterResponse {
            lease_seconds: u32::try_from(lease.as_secs()).unwrap_or(u32::MAX),
        }))
    }
}
