//! `voxwire.v1.Voxwire` (Speak, Transcribe, Converse) and `voxwire.v1.Registry`.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use voxwire_proto::session::validate_session_id;
use voxwire_proto::stt::{RecognizeRequest, TranscriptEvent};
use voxwire_proto::stt_stream::SttRequestValidator;
use voxwire_proto::tts::{AudioFrame, TextChunk};
use voxwire_proto::voxwire::v1::registry_server::Registry;
use voxwire_proto::voxwire::v1::voxwire_server::Voxwire;
use voxwire_proto::voxwire::v1::{
    ConverseEvent, ConverseRequest, RegisterRequest, RegisterResponse, SpeakRequest,
};
use voxwire_proto::{Rule, Violation};

use crate::app::Orchestrator;
use crate::converse;
use crate::sessions::{new_session_id, ClientSession, Opener};
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
        // Before the client's stream ends, so a client that saw its turn end
        // sees the worker's capacity returned.
        if session.implicit {
            app.end_implicit_session(&session).await;
        }
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
    let config = validator.accept_config(&first)?.clone();
    let admitted = app.admit()?;
    let (tx, rx) = mpsc::channel(32);
    let idle = app.settings.stream_idle;
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
                    let Ok(next) = tokio::time::timeout(idle, input.next()).await else {
                        return Err(idle_stream(idle, "audio"));
                    };
                    match next {
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
                        Some(Err(status)) => return Err(client_stream_error(status)),
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

/// A client's request stream failed. A message that does not decode (bad
/// protobuf, a string that is not UTF-8, a stream cut mid-message) is the
/// client's fault: INVALID_ARGUMENT, never INTERNAL, which the docs keep for
/// a worker that broke a rule. Anything else means the client went away.
pub fn client_stream_error(status: Status) -> Status {
    if is_decode_error(&status) {
        Status::invalid_argument(format!("a request does not decode: {}", status.message()))
    } else {
        Status::cancelled(format!("client stream: {status}"))
    }
}

/// tonic reports a request it cannot decode as INTERNAL with prost's
/// message, or its own for a stream cut mid-message.
pub fn is_decode_error(status: &Status) -> bool {
    status.code() == tonic::Code::Internal
        && (status
            .message()
            .starts_with("failed to decode Protobuf message")
            || status
                .message()
                .starts_with("Unexpected EOF decoding stream"))
}

/// A client stream that sent nothing for `idle` while holding a worker
/// stream: closed, so it does not hold the worker's slot for ever.
pub fn idle_stream(idle: std::time::Duration, what: &str) -> Status {
    Status::deadline_exceeded(format!(
        "no {what} from the client within {} s (--stream-idle-seconds): the stream is closed",
        idle.as_secs()
    ))
}

/// Reads the first request of a Recognize stream.
pub async fn first_request(
    input: &mut Streaming<RecognizeRequest>,
    idle: std::time::Duration,
) -> Result<RecognizeRequest, Status> {
    let next = tokio::time::timeout(idle, input.message())
        .await
        .map_err(|_| idle_stream(idle, "config"))?;
    next.map_err(|status| {
        if is_decode_error(&status) {
            client_stream_error(status)
        } else {
            status
        }
    })?
    .ok_or_else(|| {
        Violation::new(Rule::SttConfigFirst, "the stream closed before any config").into()
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
        let owner = request.remote_addr().map(|a| a.ip());
        let request = request.into_inner();
        // Refused here, before a worker is involved (--max-text-chars).
        voxwire_proto::tts_stream::check_text_limit(
            request.text.chars().count(),
            self.app.settings.security.max_text_chars,
        )?;
        let one_shot = request.session_id.is_empty();
        let id = if one_shot {
            new_session_id()
        } else {
            validate_session_id(&request.session_id)?;
            request.session_id
        };
        // A session Speak opens is nobody's to end: its worker session ends
        // with each turn (a careless client must not hold worker capacity).
        let opener = Opener {
            owner,
            implicit: true,
            one_shot,
        };
        let session = self
            .app
            .sessions
            .get_or_create(&id, &request.model_id, request.options, opener)
            .map_err(|e| e.to_status())?;
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
        let first = first_request(&mut input, self.app.settings.stream_idle).await?;
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
        if self.app.settings.registry.token.is_none() {
            return Err(Status::unimplemented(
                "worker registration is off on this orchestrator: start it with \
                 --registry-token-file (and workers must send that token)",
            ));
        }
        let request = request.into_inner();
        let lease = self
            .app
            .registry
            .register(&request.kind, &request.address, request.lease_seconds)
            .map_err(|e| e.to_status())?;
        Ok(Response::new(RegisterResponse {
            lease_seconds: u32::try_from(lease.as_secs()).unwrap_or(u32::MAX),
        }))
    }
}
