//! One Converse stream: text turns spoken one after another, microphone
//! audio relayed to an STT worker, barge-in, and the session's state changes
//! reported as events. One task owns the client's output, so after an
//! interrupt no frame of the cancelled turn can slip out.
//!
//! The core takes any stream of requests, so the gRPC `Converse` handler and
//! the web console's WebSocket ([`crate::web`]) drive the same sessions,
//! turns and barge-in: [`open`] is the one way in.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use tracing::Instrument;
use voxwire_proto::session::validate_session_id;
use voxwire_proto::stt::{
    recognize_request, AudioChunk, RecognitionConfig, RecognizeRequest, TranscriptEvent,
};
use voxwire_proto::stt_stream::SttRequestValidator;
use voxwire_proto::tts::AudioFrame;
use voxwire_proto::voxwire::v1::{
    converse_event, converse_request, ConverseConfig, ConverseEvent, ConverseRequest, Interrupted,
    SessionState, StateChange, TurnError,
};
use voxwire_service::InFlight;

use crate::app::Orchestrator;
use crate::metrics;
use crate::sessions::{new_session_id, ClientSession, CreateError, Opener};
use crate::trace::TraceContext;
use crate::tts_dispatch::TurnStats;

pub type EventSender = mpsc::Sender<Result<ConverseEvent, Status>>;

struct SpeakTurn {
    id: u64,
    frames: mpsc::Receiver<AudioFrame>,
    task: JoinHandle<Result<TurnStats, Status>>,
}

struct ListenTurn {
    id: u64,
    /// `None` once the client's audio ended.
    input: Option<mpsc::Sender<RecognizeRequest>>,
    validator: SttRequestValidator,
    events: mpsc::Receiver<TranscriptEvent>,
    task: JoinHandle<Result<(), Status>>,
}

/// The client went away: stop everything.
struct Gone;

struct Conversation {
    app: Arc<Orchestrator>,
    session: Arc<ClientSession>,
    config: ConverseConfig,
    trace: TraceContext,
    out: EventSender,
    next_turn: u64,
}

async fn next_frame(turn: &mut Option<SpeakTurn>) -> Option<AudioFrame> {
    match turn {
        Some(turn) => turn.frames.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_event(turn: &mut Option<ListenTurn>) -> Option<TranscriptEvent> {
    match turn {
        Some(turn) => turn.events.recv().await,
        None => std::future::pending().await,
    }
}

/// A conversation that was opened: its session id and its events.
pub struct Opened {
    pub session_id: String,
    pub events: ReceiverStream<Result<ConverseEvent, Status>>,
}

/// Opens a conversation on `input`, whose first request must carry the
/// config: validates it, admits the work, creates and pins the session, and
/// runs the conversation in its own task until the client ends it.
pub async fn open<S>(
    app: Arc<Orchestrator>,
    mut input: S,
    trace: TraceContext,
) -> Result<Opened, Status>
where
    S: Stream<Item = Result<ConverseRequest, Status>> + Send + Unpin + 'static,
{
    let first = input.next().await.transpose().map_err(|status| {
        if crate::api::is_decode_error(&status) {
            crate::api::client_stream_error(status)
        } else {
            status
        }
    })?;
    let Some(converse_request::Request::Config(config)) = first.and_then(|r| r.request) else {
        return Err(Status::invalid_argument(
            "the first ConverseRequest carries config",
        ));
    };
    let id = if config.session_id.is_empty() {
        new_session_id()
    } else {
        validate_session_id(&config.session_id)?;
        config.session_id.clone()
    };
    // The microphone format is checked when the conversation opens, by the
    // rule its audio will meet at the STT worker, not at the first audio
    // chunk, when the client has long since gone on.
    SttRequestValidator::new(app.settings.security.audio)
        .accept(&RecognizeRequest {
            request: Some(recognize_request::Request::Config(recognition_config(
                &config, &id,
            ))),
        })
        .map_err(|violation| violation.to_status())?;
    let admitted = app.admit()?;
    let session = app
        .sessions
        .create(&id, &config.model_id, Default::default(), Opener::default())
        .map_err(|error| match error {
            CreateError::AlreadyOpen => {
                Status::already_exists(format!("session {id:?} is already in a conversation"))
            }
            other => other.to_status(),
        })?;
    session.pin();
    let (tx, rx) = mpsc::channel(64);
    let span = tracing::info_span!("session", session = %id, trace_id = %trace.trace_id);
    trace.adopt(&span);
    tokio::spawn(run(app, session, config, input, trace, tx, admitted).instrument(span));
    Ok(Opened {
        session_id: id,
        events: ReceiverStream::new(rx),
    })
}

/// Runs the conversation until the client ends it and all work is done.
async fn run<S>(
    app: Arc<Orchestrator>,
    session: Arc<ClientSession>,
    config: ConverseConfig,
    mut input: S,
    trace: TraceContext,
    out: EventSender,
    _admitted: InFlight,
) where
    S: Stream<Item = Result<ConverseRequest, Status>> + Send + Unpin + 'static,
{
    let mut conversation = Conversation {
        app: Arc::clone(&app),
        session: Arc::clone(&session),
        config,
        trace,
        out,
        next_turn: 1,
    };
    let mut speaking: Option<SpeakTurn> = None;
    let mut listening: Option<ListenTurn> = None;
    let mut pending: VecDeque<String> = VecDeque::new();
    let mut client_done = false;
    let result: Result<(), Gone> = async {
        conversation.transition(0, SessionState::Listening).await?;
        loop {
            if speaking.is_none() {
                if let Some(text) = pending.pop_front() {
                    speaking = Some(conversation.start_speaking(text).await?);
                }
            }
            if client_done && speaking.is_none() && listening.is_none() && pending.is_empty() {
                return Ok(());
            }
            tokio::select! {
                request = input.next(), if !client_done => match request {
                    Some(Ok(request)) => {
                        conversation
                            .handle(request, &mut speaking, &mut listening, &mut pending)
                            .await?;
                    }
                    None => {
                        client_done = true;
                        if let Some(turn) = listening.as_mut() {
                            conversation.end_audio(turn).await?;
                        }
                    }
                    Some(Err(status)) if crate::api::is_decode_error(&status) => {
                        // Every Converse failure reaches the client: as a
                        // TurnError, then the stream's status.
                        let status = crate::api::client_stream_error(status);
                        conversation.turn_error(0, &status).await?;
                        let _ = conversation.out.send(Err(status)).await;
                        return Err(Gone);
                    }
                    Some(Err(status)) => {
                        tracing::debug!(%status, "client stream broke");
                        return Err(Gone);
                    }
                },
                frame = next_frame(&mut speaking) => match frame {
                    Some(frame) => {
                        let id = speaking.as_ref().map_or(0, |t| t.id);
                        conversation.send(id, converse_event::Event::Audio(frame)).await?;
                    }
                    None => {
                        if let Some(turn) = speaking.take() {
                            conversation.finish_speaking(turn).await?;
                        }
                    }
                },
                () = tokio::time::sleep(app.settings.stream_idle), if listening.as_ref().is_some_and(|t| t.input.is_some()) => {
                    // A listening turn the client feeds nothing holds an STT
                    // slot; end it (the conversation goes on). Any activity
                    // of the loop starts this wait afresh.
                    if let Some(turn) = listening.take() {
                        turn.task.abort();
                        let status = crate::api::idle_stream(app.settings.stream_idle, "audio");
                        conversation.turn_error(turn.id, &status).await?;
                    }
                }
                event = next_event(&mut listening) => match event {
                    Some(event) => {
                        let id = listening.as_ref().map_or(0, |t| t.id);
                        if conversation.config.echo && event.is_final && !event.text.trim().is_empty() {
                            pending.push_back(event.text.clone());
                        }
                        conversation.send(id, converse_event::Event::Transcript(event)).await?;
                    }
                    None => {
                        if let Some(turn) = listening.take() {
                            conversation.finish_listening(turn).await?;
                        }
                    }
                },
            }
        }
    }
    .await;
    if let Some(turn) = speaking.take() {
        turn.task.abort();
    }
    if let Some(turn) = listening.take() {
        turn.task.abort();
    }
    // Read before removal, which moves the session to TERMINATED itself.
    let from = session.state();
    if app.sessions.remove(&session.id).is_some() && result.is_ok() {
        let _ = conversation
            .send(
                0,
                converse_event::Event::State(StateChange {
                    from: from as i32,
                    to: SessionState::Terminated as i32,
                }),
            )
            .await;
    }
    let mut binding = session.tts.lock().await;
    app.tts.close_session(&mut binding).await;
}

impl Conversation {
    async fn send(&self, turn_id: u64, event: converse_event::Event) -> Result<(), Gone> {
        self.out
            .send(Ok(ConverseEvent {
                turn_id,
                event: Some(event),
            }))
            .await
            .map_err(|_| Gone)
    }

    /// Moves the session and reports it; an invalid move is logged and counted.
    async fn transition(&self, turn_id: u64, to: SessionState) -> Result<(), Gone> {
        if let Some((from, to)) = self.session.transition(to) {
            self.send(
                turn_id,
                converse_event::Event::State(StateChange {
                    from: from as i32,
                    to: to as i32,
                }),
            )
            .await?;
        }
        Ok(())
    }

    async fn turn_error(&self, turn_id: u64, status: &Status) -> Result<(), Gone> {
        self.send(
            turn_id,
            converse_event::Event::Error(TurnError {
                code: status.code() as i32,
                message: status.message().to_string(),
            }),
        )
        .await
    }

    async fn handle(
        &mut self,
        request: ConverseRequest,
        speaking: &mut Option<SpeakTurn>,
        listening: &mut Option<ListenTurn>,
        pending: &mut VecDeque<String>,
    ) -> Result<(), Gone> {
        use converse_request::Request;
        match request.request {
            Some(Request::Say(text)) => pending.push_back(text),
            Some(Request::Interrupt(_)) => self.interrupt(speaking, pending).await?,
            Some(Request::Audio(pcm)) => {
                if listening.is_none() {
                    *listening = self.start_listening().await?;
                }
                if let Some(turn) = listening.as_mut() {
                    let chunk = RecognizeRequest {
                        request: Some(recognize_request::Request::Audio(AudioChunk {
                            audio_data: pcm,
                            is_final: false,
                        })),
                    };
                    self.feed(turn, chunk).await?;
                }
            }
            Some(Request::EndOfAudio(_)) => {
                if let Some(turn) = listening.as_mut() {
                    self.end_audio(turn).await?;
                }
            }
            Some(Request::Config(_)) | None => {
                let status = Status::invalid_argument(
                    "config comes once, first; a request must carry something",
                );
                self.turn_error(0, &status).await?;
            }
        }
        Ok(())
    }

    async fn start_speaking(&mut self, text: String) -> Result<SpeakTurn, Gone> {
        let id = self.next_turn;
        self.next_turn += 1;
        self.transition(id, SessionState::Speaking).await?;
        let (tx, frames) = mpsc::channel(8);
        let app = Arc::clone(&self.app);
        let session = Arc::clone(&self.session);
        let trace = self.trace.clone();
        let span = tracing::info_span!("turn", session = %session.id, turn = id, trace_id = %trace.trace_id);
        let task = tokio::spawn(
            async move {
                let mut binding = session.tts.lock().await;
                app.tts.speak(&mut binding, &text, &trace, &tx).await
            }
            .instrument(span),
        );
        Ok(SpeakTurn { id, frames, task })
    }

    async fn finish_speaking(&mut self, turn: SpeakTurn) -> Result<(), Gone> {
        match turn.task.await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => self.turn_error(turn.id, &status).await?,
            Err(join) => {
                tracing::error!(%join, "speak task failed");
                self.turn_error(turn.id, &Status::internal("the turn's task failed"))
                    .await?;
            }
        }
        self.transition(turn.id, SessionState::Listening).await
    }

    /// Barge-in: cancel the worker stream, drop the frames not sent yet.
    async fn interrupt(
        &mut self,
        speaking: &mut Option<SpeakTurn>,
        pending: &mut VecDeque<String>,
    ) -> Result<(), Gone> {
        let arrived = Instant::now();
        pending.clear();
        let Some(turn) = speaking.take() else {
            tracing::debug!(session = %self.session.id, "interrupt with nothing to stop");
            return Ok(());
        };
        turn.task.abort();
        self.app.metrics.inc(
            metrics::TURNS,
            &[("kind", "tts"), ("outcome", "interrupted")],
        );
        let mut frames = turn.frames;
        frames.close();
        let mut dropped = 0u64;
        while frames.try_recv().is_ok() {
            dropped += 1;
        }
        // This task is the only writer to the client: from here on, silence.
        let elapsed = arrived.elapsed();
        self.app
            .metrics
            .observe(metrics::INTERRUPT, &[("kind", "tts")], elapsed);
        self.transition(turn.id, SessionState::BargedIn).await?;
        self.send(
            turn.id,
            converse_event::Event::Interrupted(Interrupted {
                interrupt_to_silence_us: i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX),
                frames_dropped: dropped,
            }),
        )
        .await?;
        self.transition(turn.id, SessionState::Listening).await
    }

    async fn start_listening(&mut self) -> Result<Option<ListenTurn>, Gone> {
        let id = self.next_turn;
        self.next_turn += 1;
        let config = recognition_config(&self.config, &self.session.id);
        let mut validator = SttRequestValidator::new(self.app.settings.security.audio);
        let request = RecognizeRequest {
            request: Some(recognize_request::Request::Config(config.clone())),
        };
        if let Err(violation) = validator.accept(&request) {
            self.turn_error(id, &violation.to_status()).await?;
            return Ok(None);
        }
        let (input, mut input_rx) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(64);
        let app = Arc::clone(&self.app);
        let trace = self.trace.clone();
        let span = tracing::info_span!("turn", session = %self.session.id, turn = id, trace_id = %trace.trace_id);
        let task = tokio::spawn(
            async move {
                app.stt
                    .recognize(config, &mut input_rx, &trace, &events_tx)
                    .await
            }
            .instrument(span),
        );
        Ok(Some(ListenTurn {
            id,
            input: Some(input),
            validator,
            events,
            task,
        }))
    }

    /// Validates one request and passes it on; a bad one ends the listening
    /// turn with its rule's status.
    async fn feed(&self, turn: &mut ListenTurn, request: RecognizeRequest) -> Result<(), Gone> {
        if turn.input.is_none() {
            return Ok(());
        }
        if let Err(violation) = turn.validator.accept(&request) {
            turn.input = None;
            turn.task.abort();
            return self.turn_error(turn.id, &violation.to_status()).await;
        }
        if let Some(input) = &turn.input {
            // A closed input means the relay already ended; its result says why.
            let _ = input.send(request).await;
        }
        Ok(())
    }

    async fn end_audio(&self, turn: &mut ListenTurn) -> Result<(), Gone> {
        let end = RecognizeRequest {
            request: Some(recognize_request::Request::Audio(AudioChunk {
                audio_data: Default::default(),
                is_final: true,
            })),
        };
        self.feed(turn, end).await?;
        turn.input = None;
        Ok(())
    }

    async fn finish_listening(&self, turn: ListenTurn) -> Result<(), Gone> {
        match turn.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) => self.turn_error(turn.id, &status).await,
            // Aborted after a bad request: its error was already reported.
            Err(join) if join.is_cancelled() => Ok(()),
            Err(join) => {
                tracing::error!(%join, "listen task failed");
                self.turn_error(turn.id, &Status::internal("the turn's task failed"))
                    .await
            }
        }
    }
}

/// The config of the STT stream a conversation's microphone audio goes to.
fn recognition_config(config: &ConverseConfig, session_id: &str) -> RecognitionConfig {
    RecognitionConfig {
        session_id: session_id.to_string(),
        sample_rate: config.input_sample_rate,
        language: config.language.clone(),
        partial_results: config.partial_results,
        model_id: String::new(),
    }
}
