//! A small TTS worker built from the proto crate's `Framer`, correct unless
//! one fault is switched on. Its "engine" turns each character into 10 ms of
//! tone after a fixed compute time per sentence, so timing faults (buffering,
//! ignored cancellation) show the way they would with a real voice.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use voxwire_proto::audio::FrameFormat;
use voxwire_proto::tts::tts_service_server::{TtsService, TtsServiceServer};
use voxwire_proto::tts::*;
use voxwire_proto::tts_stream::{check_chunk_session, check_text_limit, Framer};
use voxwire_proto::{metrics, service_names, Rule, Violation};
use voxwire_service::{Drain, Health};

use super::health::{broken, HealthMode};

/// One fault at a time; `None` is a conforming worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtsFault {
    None,
    EmptyNonfinalFrame,
    WrongFrameSize,
    FormatInvalid,
    FormatChange,
    SeqStartZero,
    SeqGap,
    WrongSessionEcho,
    MissingFinal,
    DuplicateFinal,
    FrameAfterFinal,
    /// Synthesizes the whole input before sending the first frame.
    BufferEverything,
    /// Holds every frame until the client half-closes, is_final or not
    /// (the existing Python fleet's worker).
    BufferUntilHalfClose,
    /// Streams sentence by sentence while the input is open, but a whole
    /// text sent at once is synthesized whole before the first frame.
    BufferWholeInput,
    /// Synthesize never answers: no headers, no frame, no status.
    SynthesizeHangs,
    /// Keeps a cancelled call's capacity.
    IgnoreCancel,
    /// Calls on a session take turns, and a cancelled call keeps its turn
    /// (the orchestrator's bug behind tts/regress/cancel-then-next-call-served).
    SessionHeldAfterCancel,
    /// Every error answers UNKNOWN instead of its rule's code.
    WrongStatusCodes,
    HealthAlwaysServing,
    HealthAbsent,
    WatchNotStreaming,
    /// STOP ends every session's synthesis.
    StopLeaks,
    StopIgnored,
    PauseIgnored,
    CapacityNotEnforced,
    /// Past the limit, StartSession never answers.
    CapacityHangs,
    /// A session is closed after its first call.
    OneCallPerSession,
    /// EndSession of a session that is not open fails NOT_FOUND.
    EndSessionFails,
    ChunkSessionIgnored,
    TextLimitIgnored,
    /// Text with no letter (empty, blank, punctuation) fails INVALID_ARGUMENT.
    RejectsTextWithoutLetters,
    MetricsMissing,
    /// On drain: still SERVING, still taking new work.
    DrainIgnored,
}

pub const MAX_SESSIONS: usize = 4;
pub const MAX_TEXT_CHARS: usize = 2_000;
const SAMPLE_RATE: u32 = 48_000;
const CHAR_SAMPLES: usize = 480;
/// Large against scheduling noise on a loaded machine: ten buffered
/// sentences (200 ms) stay far past 2x one sentence (+25 ms).
const SENTENCE_COMPUTE: Duration = Duration::from_millis(20);
const FRAME_BUFFER: usize = 16;
/// How long IgnoreCancel keeps a dead call's capacity.
const LEAK: Duration = Duration::from_secs(30);

struct Session {
    stops: watch::Sender<u64>,
    paused: watch::Sender<bool>,
    calls: AtomicUsize,
    /// The session's turn, taken by each call with SessionHeldAfterCancel only.
    turn: Arc<tokio::sync::Mutex<()>>,
}

struct State {
    fault: TtsFault,
    drain: Drain,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    active_streams: Arc<AtomicUsize>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn status(&self, violation: Violation) -> Status {
        if self.fault == TtsFault::WrongStatusCodes {
            Status::unknown(violation.to_string())
        } else {
            violation.to_status()
        }
    }

    fn session(&self, id: &str) -> Result<Arc<Session>, Status> {
        lock(&self.sessions).get(id).cloned().ok_or_else(|| {
            self.status(Violation::new(
                Rule::TtsSessionUnknown,
                format!("no session {id:?}"),
            ))
        })
    }
}

#[derive(Clone)]
struct FaultyTts {
    state: Arc<State>,
}

/// Decrements active_streams when the call is over, and lets a drain wait
/// for it.
struct StreamGuard(Arc<AtomicUsize>, voxwire_service::InFlight);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn sentences(buffer: &mut String, flush: bool) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let cut = buffer
            .char_indices()
            .find(|&(i, c)| {
                let rest = &buffer[i + c.len_utf8()..];
                matches!(c, '.' | '!' | '?')
                    && (rest.is_empty() || rest.starts_with(char::is_whitespace))
            })
            .map(|(i, c)| i + c.len_utf8());
        match cut {
            Some(at) => {
                let rest = buffer.split_off(at);
                out.push(std::mem::replace(buffer, rest));
            }
            None => break,
        }
    }
    if flush && !buffer.is_empty() {
        out.push(std::mem::take(buffer));
    }
    out
}

fn speak(sentence: &str) -> Vec<i16> {
    let mut out = Vec::new();
    for c in sentence.chars() {
        if c.is_whitespace() {
            out.extend(std::iter::repeat_n(0i16, CHAR_SAMPLES));
            continue;
        }
        let hz = 200.0 + 20.0 * (u32::from(c) % 40) as f32;
        out.extend((0..CHAR_SAMPLES).map(|i| {
            let t = i as f32 / SAMPLE_RATE as f32;
            ((std::f32::consts::TAU * hz * t).sin() * 6000.0) as i16
        }));
    }
    out
}

/// Applies the frame faults as frames leave, numbering them itself: frames
/// dropped by a STOP never leave a gap.
struct Emitter {
    tx: mpsc::Sender<Result<AudioFrame, Status>>,
    fault: TtsFault,
    next_seq: i64,
    data_sent: usize,
}

enum Halt {
    Gone,
}

impl Emitter {
    async fn raw(&mut self, mut frame: AudioFrame) -> Result<(), Halt> {
        frame.sequence_number = self.next_seq;
        self.next_seq += 1;
        if self.fault == TtsFault::WrongSessionEcho {
            frame.session_id = "someone-else".to_string();
        }
        self.tx.send(Ok(frame)).await.map_err(|_| Halt::Gone)
    }

    async fn frame(&mut self, mut frame: AudioFrame) -> Result<(), Halt> {
        if self.next_seq == 1 && self.fault == TtsFault::SeqStartZero {
            self.next_seq = 0;
        }
        if self.next_seq == 2 && self.fault == TtsFault::SeqGap {
            self.next_seq = 3;
        }
        let has_audio = !frame.audio_data.is_empty();
        if has_audio {
            self.data_sent += 1;
            match self.fault {
                TtsFault::FormatInvalid => frame.sample_rate = 7_000,
                TtsFault::WrongFrameSize if self.data_sent == 1 => {
                    let mut bytes = frame.audio_data.to_vec();
                    bytes.truncate(bytes.len() - if frame.is_final { 1 } else { 2 });
                    frame.audio_data = bytes.into();
                }
                TtsFault::FormatChange if self.data_sent == 2 => {
                    let half = frame.audio_data.len() / 4 * 2;
                    frame.sample_rate = 24_000;
                    frame.audio_data = frame.audio_data.slice(..half);
                }
                _ => {}
            }
        }
        let is_final = frame.is_final;
        let template = frame.clone();
        if is_final && self.fault == TtsFault::MissingFinal {
            let full = FrameFormat::DEFAULT.frame_bytes();
            if frame.audio_data.len() == full {
                frame.is_final = false;
                return self.raw(frame).await;
            }
            return Ok(());
        }
        self.raw(frame).await?;
        if has_audio && self.data_sent == 1 && self.fault == TtsFault::EmptyNonfinalFrame {
            self.raw(AudioFrame {
                audio_data: Default::default(),
                is_final: false,
                ..template.clone()
            })
            .await?;
        }
        if is_final {
            match self.fault {
                TtsFault::DuplicateFinal => {
                    self.raw(AudioFrame {
                        audio_data: Default::default(),
                        is_final: true,
                        ..template
                    })
                    .await?;
                }
                TtsFault::FrameAfterFinal => {
                    self.raw(AudioFrame {
                        audio_data: vec![0u8; FrameFormat::DEFAULT.frame_bytes()].into(),
                        sample_rate: SAMPLE_RATE as i32,
                        frame_duration_ms: 20,
                        is_final: false,
                        ..template
                    })
                    .await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

struct Call {
    state: Arc<State>,
    session: Arc<Session>,
    session_id: String,
    input: Streaming<TextChunk>,
    first: TextChunk,
    emitter: Emitter,
}

impl Call {
    async fn run(mut self, guard: StreamGuard) {
        let turn = if self.state.fault == TtsFault::SessionHeldAfterCancel {
            Some(Arc::clone(&self.session.turn).lock_owned().await)
        } else {
            None
        };
        let gone = self.speak().await.is_err();
        if gone && turn.is_some() {
            // The bug: the cancelled call's turn is not given back for long.
            tokio::time::sleep(LEAK).await;
        }
        drop(turn);
        if gone && self.state.fault == TtsFault::IgnoreCancel {
            // The bug: the call's capacity is only given back much later.
            tokio::time::sleep(LEAK).await;
        }
        drop(guard);
    }

    async fn speak(&mut self) -> Result<(), Halt> {
        let fault = self.state.fault;
        let mut stops = self.session.stops.subscribe();
        stops.borrow_and_update();
        let mut paused = self.session.paused.subscribe();
        let mut framer = Framer::new(self.session_id.clone(), FrameFormat::DEFAULT);
        let mut held: Vec<AudioFrame> = Vec::new();
        let mut text = String::new();
        let mut chars = 0usize;
        let mut next = Some(self.first.clone());
        let mut stopped = false;
        let buffer_all = match fault {
            TtsFault::BufferEverything | TtsFault::BufferUntilHalfClose => true,
            TtsFault::BufferWholeInput => self.first.is_final,
            _ => false,
        };
        'input: while let Some(chunk) = next.take() {
            let mut checked = Ok(());
            if fault != TtsFault::ChunkSessionIgnored {
                checked = check_chunk_session(Some(&self.session_id), &chunk);
            }
            chars += chunk.text.chars().count();
            if checked.is_ok() && fault != TtsFault::TextLimitIgnored {
                checked = check_text_limit(chars, MAX_TEXT_CHARS);
            }
            if let Err(violation) = checked {
                let _ = self
                    .emitter
                    .tx
                    .send(Err(self.state.status(violation)))
                    .await;
                return Ok(());
            }
            text.push_str(&chunk.text);
            // The fleet's bug: is_final ignored, only the half-close counts.
            let done = chunk.is_final && fault != TtsFault::BufferUntilHalfClose;
            let ready = sentences(&mut text, done);
            for sentence in ready {
                tokio::time::sleep(SENTENCE_COMPUTE).await;
                for frame in framer.push(&speak(&sentence)) {
                    if buffer_all {
                        held.push(frame);
                        continue;
                    }
                    if !self.send(frame, &mut stops, &mut paused).await? {
                        stopped = true;
                        break 'input;
                    }
                }
            }
            if done {
                break;
            }
            next = tokio::select! {
                _ = stops.changed(), if fault != TtsFault::StopIgnored => { stopped = true; None }
                message = self.input.message() => match message {
                    Ok(Some(chunk)) => Some(chunk),
                    Ok(None) => {
                        for sentence in sentences(&mut text, true) {
                            tokio::time::sleep(SENTENCE_COMPUTE).await;
                            let frames = framer.push(&speak(&sentence));
                            if buffer_all {
                                held.extend(frames);
                                continue;
                            }
                            for frame in frames {
                                if !self.send(frame, &mut stops, &mut paused).await? {
                                    stopped = true;
                                    break;
                                }
                            }
                        }
                        None
                    }
                    Err(_) => return Err(Halt::Gone),
                },
            };
        }
        if !stopped {
            for frame in held {
                if !self.send(frame, &mut stops, &mut paused).await? {
                    break;
                }
            }
        }
        self.emitter.frame(framer.finish()).await
    }

    /// Sends one frame, held while paused. `Ok(false)`: STOP came.
    async fn send(
        &mut self,
        frame: AudioFrame,
        stops: &mut watch::Receiver<u64>,
        paused: &mut watch::Receiver<bool>,
    ) -> Result<bool, Halt> {
        let honour_stop = self.state.fault != TtsFault::StopIgnored;
        while *paused.borrow_and_update() && self.state.fault != TtsFault::PauseIgnored {
            tokio::select! {
                _ = paused.changed() => {}
                _ = stops.changed(), if honour_stop => return Ok(false),
            }
        }
        let tx = self.emitter.tx.clone();
        tokio::select! {
            biased;
            _ = stops.changed(), if honour_stop => Ok(false),
            permit = tx.reserve() => {
                drop(permit.map_err(|_| Halt::Gone)?);
                self.emitter.frame(frame).await.map(|()| true)
            }
        }
    }
}

#[tonic::async_trait]
impl TtsService for FaultyTts {
    async fn start_session(
        &self,
        request: Request<StartSessionRequest>,
    ) -> Result<Response<StartSessionResponse>, Status> {
        let request = request.into_inner();
        let state = &self.state;
        voxwire_proto::session::validate_session_id(&request.session_id)
            .map_err(|v| state.status(v))?;
        if state.drain.is_draining() && state.fault != TtsFault::DrainIgnored {
            return Err(Status::unavailable("HEALTH-DRAIN: draining"));
        }
        if !request.model_id.is_empty() && request.model_id != "tone" {
            return Err(state.status(Violation::new(Rule::TtsModelUnknown, "no such model")));
        }
        let over = {
            let sessions = lock(&state.sessions);
            if sessions.contains_key(&request.session_id) {
                return Err(state.status(Violation::new(Rule::TtsSessionDuplicate, "open")));
            }
            sessions.len() >= MAX_SESSIONS
        };
        if over {
            match state.fault {
                TtsFault::CapacityNotEnforced => {}
                TtsFault::CapacityHangs => std::future::pending::<()>().await,
                _ => return Err(state.status(Violation::new(Rule::TtsCapacity, "full"))),
            }
        }
        lock(&state.sessions).insert(
            request.session_id,
            Arc::new(Session {
                stops: watch::channel(0).0,
                paused: watch::channel(false).0,
                calls: AtomicUsize::new(0),
                turn: Arc::new(tokio::sync::Mutex::new(())),
            }),
        );
        Ok(Response::new(StartSessionResponse {
            success: true,
            message: String::new(),
        }))
    }

    async fn end_session(
        &self,
        request: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        let id = request.into_inner().session_id;
        match lock(&self.state.sessions).remove(&id) {
            Some(session) => {
                session.stops.send_modify(|n| *n += 1);
            }
            None if self.state.fault == TtsFault::EndSessionFails => {
                return Err(Status::not_found("no such session"));
            }
            None => {}
        }
        Ok(Response::new(EndSessionResponse { success: true }))
    }

    type SynthesizeStream = ReceiverStream<Result<AudioFrame, Status>>;

    async fn synthesize(
        &self,
        request: Request<Streaming<TextChunk>>,
    ) -> Result<Response<Self::SynthesizeStream>, Status> {
        if self.state.fault == TtsFault::SynthesizeHangs {
            std::future::pending::<()>().await;
        }
        let mut input = request.into_inner();
        let (tx, rx) = mpsc::channel(FRAME_BUFFER);
        let Some(first) = input.message().await? else {
            let _ = tx
                .send(Ok(Framer::new("", FrameFormat::DEFAULT).finish()))
                .await;
            return Ok(Response::new(ReceiverStream::new(rx)));
        };
        let state = Arc::clone(&self.state);
        let session = state.session(&first.session_id)?;
        if session.calls.fetch_add(1, Ordering::AcqRel) > 0
            && state.fault == TtsFault::OneCallPerSession
        {
            return Err(state.status(Violation::new(Rule::TtsSessionUnknown, "session used up")));
        }
        if state.fault == TtsFault::RejectsTextWithoutLetters
            && !first.text.chars().any(char::is_alphabetic)
        {
            return Err(Status::invalid_argument("nothing to say"));
        }
        let in_flight = state.drain.admit()?;
        state.active_streams.fetch_add(1, Ordering::AcqRel);
        let guard = StreamGuard(Arc::clone(&state.active_streams), in_flight);
        let call = Call {
            emitter: Emitter {
                tx,
                fault: state.fault,
                next_seq: 1,
                data_sent: 0,
            },
            session_id: first.session_id.clone(),
            state,
            session,
            input,
            first,
        };
        tokio::spawn(call.run(guard));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn control(
        &self,
        request: Request<ControlRequest>,
    ) -> Result<Response<ControlResponse>, Status> {
        let request = request.into_inner();
        let session = self.state.session(&request.session_id)?;
        let fault = self.state.fault;
        match ControlCommand::try_from(request.command) {
            Ok(ControlCommand::Stop) => {
                if fault == TtsFault::StopLeaks {
                    for other in lock(&self.state.sessions).values() {
                        other.stops.send_modify(|n| *n += 1);
                    }
                } else {
                    session.stops.send_modify(|n| *n += 1);
                }
                session.paused.send_replace(false);
            }
            Ok(ControlCommand::Pause) => {
                if fault != TtsFault::PauseIgnored {
                    session.paused.send_replace(true);
                }
            }
            Ok(ControlCommand::Resume) => {
                session.paused.send_replace(false);
            }
            Ok(ControlCommand::Reload) => {}
            Err(_) => return Err(Status::invalid_argument("unknown command")),
        }
        Ok(Response::new(ControlResponse {
            success: true,
            message: String::new(),
            timestamp_ms: 0,
        }))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse {
            models: vec![ModelInfo {
                model_id: "tone".to_string(),
                is_loaded: true,
                ..Default::default()
            }],
        }))
    }

    async fn load_model(
        &self,
        _request: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelResponse>, Status> {
        Ok(Response::new(LoadModelResponse {
            success: true,
            ..Default::default()
        }))
    }

    async fn unload_model(
        &self,
        _request: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelResponse>, Status> {
        Ok(Response::new(UnloadModelResponse {
            success: true,
            ..Default::default()
        }))
    }

    async fn get_capabilities(
        &self,
        _request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        let mut load = HashMap::new();
        if self.state.fault != TtsFault::MetricsMissing {
            let sessions = lock(&self.state.sessions).len() as f64;
            load.insert(metrics::ACTIVE_SESSIONS.to_string(), sessions);
            load.insert(
                metrics::ACTIVE_STREAMS.to_string(),
                self.state.active_streams.load(Ordering::Acquire) as f64,
            );
            load.insert(metrics::MAX_SESSIONS.to_string(), MAX_SESSIONS as f64);
            load.insert(metrics::MAX_TEXT_CHARS.to_string(), MAX_TEXT_CHARS as f64);
        }
        Ok(Response::new(GetCapabilitiesResponse {
            capabilities: Some(Capabilities {
                streaming: true,
                cpu_ok: true,
                max_concurrent_sessions: MAX_SESSIONS as i32,
                ..Default::default()
            }),
            resident_models: vec!["tone".to_string()],
            metrics: load,
        }))
    }
}

/// A worker serving on a loopback port until dropped.
pub struct RunningFake {
    pub addr: SocketAddr,
    pub stop: super::Stopper,
}

pub async fn start(fault: TtsFault) -> RunningFake {
    let (listener, addr) = voxwire_service::bind("127.0.0.1:0").await.expect("bind");
    let (health, health_service) = Health::new(&[service_names::TTS]).await;
    health.set_serving(true).await;
    let mode = match fault {
        TtsFault::HealthAlwaysServing => HealthMode::AlwaysServing,
        TtsFault::HealthAbsent => HealthMode::Absent,
        TtsFault::WatchNotStreaming => HealthMode::WatchNotStreaming,
        _ => HealthMode::Real,
    };
    let drain = Drain::new();
    let state = Arc::new(State {
        fault,
        drain: drain.clone(),
        sessions: Mutex::new(HashMap::new()),
        active_streams: Arc::new(AtomicUsize::new(0)),
    });
    let router = Server::builder()
        .add_optional_service((mode == HealthMode::Real).then_some(health_service))
        .add_optional_service(broken(mode, &[service_names::TTS]))
        .add_service(TtsServiceServer::new(FaultyTts { state }));
    let (stop, stopped) = oneshot::channel::<()>();
    let health = if fault == TtsFault::DrainIgnored {
        // The bug: the drain reports to a health nobody serves.
        Health::new(&[]).await.0
    } else {
        health
    };
    tokio::spawn(voxwire_service::serve(
        router,
        listener,
        health,
        drain,
        Duration::from_secs(1),
        async {
            let _ = stopped.await;
        },
    ));
    RunningFake {
        addr,
        stop: super::Stopper::new(stop),
    }
}
