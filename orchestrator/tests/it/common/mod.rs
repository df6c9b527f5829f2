//! Fixtures: the orchestrator, tone workers, scripted fake workers, a TCP
//! proxy that can "kill" a worker mid-stream, and waits that follow events
//! (health Watch, pool changes) under a deadline, never bare sleeps.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use voxwire_orchestrator::config::Args;
use voxwire_orchestrator::endpoint::{EndpointSnapshot, EndpointState};
use voxwire_orchestrator::pool::Pool;
use voxwire_orchestrator::server::{start, Running};
use voxwire_proto::audio::FrameFormat;
use voxwire_proto::stt;
use voxwire_proto::stt::stt_service_server::{SttService, SttServiceServer};
use voxwire_proto::tts::tts_service_server::{TtsService, TtsServiceServer};
use voxwire_proto::tts::*;
use voxwire_proto::tts_stream::{Framer, TtsStreamValidator};
use voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient;
use voxwire_proto::voxwire::v1::SpeakRequest;
use voxwire_tts_worker::server::{self as tts_server, RunningWorker};

pub const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- orchestrator

pub struct Orchestrator {
    pub running: Running,
    pub stop: Option<oneshot::Sender<()>>,
    pub channel: Channel,
}

pub async fn orchestrator(args: Args) -> Orchestrator {
    voxwire_service::init_tracing();
    let (stop, stopped) = oneshot::channel();
    let running = start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("orchestrator starts");
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect to orchestrator");
    Orchestrator {
        running,
        stop: Some(stop),
        channel,
    }
}

pub fn tts_args(targets: &[String]) -> Args {
    Args {
        tts: targets.join(","),
        ..Args::for_tests()
    }
}

/// The token workers register with in these tests (registration is off
/// without one).
pub const REGISTRY_TOKEN: &str = "test-registry-token";

/// `args` with registration turned on (the token [`REGISTRY_TOKEN`]).
pub fn with_registry(args: Args) -> Args {
    Args {
        registry_token: Some(
            voxwire_service::credentials::Secret::new(REGISTRY_TOKEN).expect("valid token"),
        ),
        ..args
    }
}

/// Register as a worker would, sending `token` (`None`: no credentials).
pub async fn register_with(
    channel: &Channel,
    token: Option<&str>,
    kind: &str,
    address: &str,
    lease_seconds: u32,
) -> Result<voxwire_proto::voxwire::v1::RegisterResponse, Status> {
    let token = token.map(|t| voxwire_service::credentials::Secret::new(t).expect("valid token"));
    let mut client = voxwire_proto::voxwire::v1::registry_client::RegistryClient::with_interceptor(
        channel.clone(),
        voxwire_service::credentials::BearerToken::new(token),
    );
    client
        .register(voxwire_proto::voxwire::v1::RegisterRequest {
            kind: kind.into(),
            address: address.into(),
            lease_seconds,
        })
        .await
        .map(Response::into_inner)
}

impl Orchestrator {
    /// Registers `address` with the registry token of [`with_registry`].
    pub async fn register(
        &self,
        kind: &str,
        address: &str,
        lease_seconds: u32,
    ) -> Result<voxwire_proto::voxwire::v1::RegisterResponse, Status> {
        register_with(
            &self.channel,
            Some(REGISTRY_TOKEN),
            kind,
            address,
            lease_seconds,
        )
        .await
    }

    pub fn voxwire(&self) -> VoxwireClient<Channel> {
        VoxwireClient::new(self.channel.clone())
    }

    pub fn tts_pool(&self) -> &Arc<Pool> {
        self.running.app.tts.pool()
    }

    pub fn stt_pool(&self) -> &Arc<Pool> {
        self.running.app.stt.pool()
    }

    /// Waits on the orchestrator's own health Watch for SERVING (ready).
    pub async fn wait_ready(&self) {
        wait_serving(&self.channel, "").await;
    }

    /// Waits, following pool changes, until `pred` holds for the TTS pool.
    pub async fn wait_tts(&self, what: &str, pred: impl Fn(&[EndpointSnapshot]) -> bool) {
        wait_pool(self.tts_pool(), what, pred).await;
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.running.http_addr, path).await
    }
}

pub async fn wait_pool(pool: &Pool, what: &str, pred: impl Fn(&[EndpointSnapshot]) -> bool) {
    let mut changes = pool.subscribe();
    let waited = tokio::time::timeout(WAIT, async {
        loop {
            changes.borrow_and_update();
            if pred(&pool.snapshot()) {
                return;
            }
            changes.changed().await.expect("pool alive");
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "timed out waiting for {what}: {:?}",
        pool.snapshot()
    );
}

pub fn state_of(all: &[EndpointSnapshot], address: &str) -> Option<EndpointState> {
    all.iter().find(|e| e.address == address).map(|e| e.state)
}

pub fn serving_count(all: &[EndpointSnapshot]) -> usize {
    all.iter()
        .filter(|e| e.state == EndpointState::Serving)
        .count()
}

pub fn dispatched(all: &[EndpointSnapshot], address: &str) -> u64 {
    all.iter()
        .find(|e| e.address == address)
        .map_or(0, |e| e.dispatched)
}

/// Waits on a server's health Watch stream for SERVING.
pub async fn wait_serving(channel: &Channel, service: &str) {
    let mut health = HealthClient::new(channel.clone());
    let waited = tokio::time::timeout(WAIT, async {
        let mut watch = health
            .watch(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("watch")
            .into_inner();
        while let Some(update) = watch.next().await {
            if update.expect("update").status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("watch ended before SERVING");
    })
    .await;
    assert!(waited.is_ok(), "SERVING within {WAIT:?}");
}

/// A minimal HTTP/1.0 GET: status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("http connect");
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_string());
    (status, body)
}

// ---------------------------------------------------------------- speaking

pub struct Spoken {
    pub frames: Vec<AudioFrame>,
    pub error: Option<Status>,
}

/// One Speak call; every frame received is checked by the validator.
pub async fn speak(client: &mut VoxwireClient<Channel>, session: &str, text: &str) -> Spoken {
    let response = client
        .speak(SpeakRequest {
            session_id: session.into(),
            text: text.into(),
            ..Default::default()
        })
        .await;
    let mut stream = match response {
        Ok(response) => response.into_inner(),
        Err(status) => {
            return Spoken {
                frames: Vec::new(),
                error: Some(status),
            }
        }
    };
    let mut validator = TtsStreamValidator::new(session);
    let mut frames = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(frame) => {
                validator
                    .observe(&frame)
                    .expect("orchestrator sent a valid frame");
                frames.push(frame);
            }
            Err(status) => {
                return Spoken {
                    frames,
                    error: Some(status),
                }
            }
        }
    }
    validator
        .finish()
        .expect("stream ended with its final frame");
    Spoken {
        frames,
        error: None,
    }
}

pub async fn speak_ok(
    client: &mut VoxwireClient<Channel>,
    session: &str,
    text: &str,
) -> Vec<AudioFrame> {
    let spoken = speak(client, session, text).await;
    if let Some(status) = spoken.error {
        panic!("speak failed: {status:?}");
    }
    assert!(
        spoken.frames.iter().any(|f| !f.audio_data.is_empty()),
        "some audio"
    );
    spoken.frames
}

// ---------------------------------------------------------------- tone workers

pub struct ToneWorker {
    pub running: RunningWorker,
    pub stop: Option<oneshot::Sender<()>>,
}

pub async fn tone_worker(args: tts_server::Args) -> ToneWorker {
    let (stop, stopped) = oneshot::channel();
    let running = tts_server::start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("tone worker starts");
    ToneWorker {
        running,
        stop: Some(stop),
    }
}

impl ToneWorker {
    pub fn address(&self) -> String {
        self.running.addr.to_string()
    }

    pub fn active_sessions(&self) -> f64 {
        self.running.worker.load_metrics()["active_sessions"]
    }
}

// ---------------------------------------------------------------- fake TTS

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Three valid data frames and a final one.
    Valid,
    InvalidArgument,
    Unavailable,
    /// The first call sends a data frame, then an empty non-final frame.
    EmptyNonFinalOnce,
    /// Data frames, then the stream ends without a final frame.
    NoFinal,
    /// Answers, then never sends a frame (a worker still computing); the
    /// response body being polled is counted in `streams_polled`.
    Stall,
    /// StartSession never answers (health and load polls do): a worker
    /// wedged in the one call.
    StartHangs,
    /// GetCapabilities never answers (the connection and health do).
    CapabilitiesHang,
}

#[derive(Clone)]
pub struct FakeTts {
    pub mode: Mode,
    pub synth_calls: Arc<AtomicUsize>,
    pub start_calls: Arc<AtomicUsize>,
    pub streams_polled: Arc<AtomicUsize>,
    pub load: f64,
}

impl FakeTts {
    pub fn new(mode: Mode) -> FakeTts {
        FakeTts {
            mode,
            synth_calls: Arc::new(AtomicUsize::new(0)),
            start_calls: Arc::new(AtomicUsize::new(0)),
            streams_polled: Arc::new(AtomicUsize::new(0)),
            load: 0.0,
        }
    }

    pub fn synth_calls(&self) -> usize {
        self.synth_calls.load(Ordering::SeqCst)
    }

    pub fn start_calls(&self) -> usize {
        self.start_calls.load(Ordering::SeqCst)
    }

    pub fn streams_polled(&self) -> usize {
        self.streams_polled.load(Ordering::SeqCst)
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<AudioFrame, Status>> + Send>>;

fn valid_frames(session: &str) -> Vec<AudioFrame> {
    let mut framer = Framer::new(session, FrameFormat::DEFAULT);
    let samples = vec![1000i16; FrameFormat::DEFAULT.samples_per_frame() * 3 + 100];
    let mut frames = framer.push(&samples);
    frames.push(framer.finish());
    frames
}

#[tonic::async_trait]
impl TtsService for FakeTts {
    async fn start_session(
        &self,
        _: Request<StartSessionRequest>,
    ) -> Result<Response<StartSessionResponse>, Status> {
        self.start_calls.fetch_add(1, Ordering::SeqCst);
        if self.mode == Mode::StartHangs {
            std::future::pending::<()>().await;
        }
        Ok(Response::new(StartSessionResponse {
            success: true,
            message: String::new(),
        }))
    }

    async fn end_session(
        &self,
        _: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        Ok(Response::new(EndSessionResponse { success: true }))
    }

    type SynthesizeStream = FrameStream;

    async fn synthesize(
        &self,
        request: Request<Streaming<TextChunk>>,
    ) -> Result<Response<FrameStream>, Status> {
        let call = self.synth_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let mut input = request.into_inner();
        let mut session = String::new();
        while let Some(chunk) = input.message().await? {
            session = chunk.session_id.clone();
            if chunk.is_final {
                break;
            }
        }
        let frames: Vec<AudioFrame> = match self.mode {
            Mode::Valid | Mode::StartHangs | Mode::CapabilitiesHang => valid_frames(&session),
            Mode::InvalidArgument => return Err(Status::invalid_argument("fake: bad text")),
            Mode::Unavailable => return Err(Status::unavailable("fake: overloaded")),
            Mode::EmptyNonFinalOnce if call == 1 => {
                let mut frames = valid_frames(&session);
                frames.truncate(1);
                frames.push(AudioFrame {
                    session_id: session.clone(),
                    sequence_number: 2,
                    is_final: false,
                    ..Default::default()
                });
                frames
            }
            Mode::EmptyNonFinalOnce => valid_frames(&session),
            Mode::NoFinal => {
                let mut frames = valid_frames(&session);
                frames.pop();
                frames
            }
            Mode::Stall => {
                let polled = self.streams_polled.clone();
                return Ok(Response::new(Box::pin(futures_util::stream::poll_fn(
                    move |_| {
                        polled.fetch_add(1, Ordering::SeqCst);
                        std::task::Poll::Pending
                    },
                ))));
            }
        };
        Ok(Response::new(Box::pin(tokio_stream::iter(
            frames.into_iter().map(Ok),
        ))))
    }

    async fn control(
        &self,
        _: Request<ControlRequest>,
    ) -> Result<Response<ControlResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_models(
        &self,
        _: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn load_model(
        &self,
        _: Request<LoadModelRequest>,
    ) -> Result<Response<LoadModelResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn unload_model(
        &self,
        _: Request<UnloadModelRequest>,
    ) -> Result<Response<UnloadModelResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn get_capabilities(
        &self,
        _: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        if self.mode == Mode::CapabilitiesHang {
            std::future::pending::<()>().await;
        }
        Ok(Response::new(GetCapabilitiesResponse {
            capabilities: None,
            resident_models: Vec::new(),
            metrics: HashMap::from([
                ("load".to_string(), self.load),
                ("max_sessions".to_string(), 64.0),
            ]),
        }))
    }
}

pub struct FakeServer {
    pub addr: SocketAddr,
    /// `None` when served without grpc.health.v1 (answers UNIMPLEMENTED).
    pub health: Option<HealthReporter>,
    task: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        let health = self.health.as_ref().expect("served with health");
        health.set_service_status("", status).await;
        health.set_service_status("tts.TTSService", status).await;
        health.set_service_status("stt.STTService", status).await;
    }
}

async fn serve_fake(
    router: tonic::transport::server::Router,
    health: Option<HealthReporter>,
) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = router.serve_with_incoming(incoming).await;
    });
    FakeServer { addr, health, task }
}

/// Serves `fake`; with `health`, a grpc.health.v1 service reporting SERVING.
pub async fn fake_tts(fake: FakeTts, health: bool) -> FakeServer {
    let service = TtsServiceServer::new(fake);
    if health {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        let server = serve_fake(
            Server::builder()
                .add_service(health_service)
                .add_service(service),
            Some(reporter),
        )
        .await;
        server.set_serving(true).await;
        server
    } else {
        serve_fake(Server::builder().add_service(service), None).await
    }
}

// ---------------------------------------------------------------- fake STT

/// Scripted STT: after the client's end of audio, one partial (when asked
/// for) and one final naming the bytes heard; or, when `broken`, an event
/// with a sequence gap; or, when `wedged`, nothing at all: it reads the audio
/// to its end and then holds the stream open without a word.
///
/// With `catch_up_rtf`, it instead transcribes like a worker with a backlog:
/// after the end of audio, one final per second of audio, each taking that
/// fraction of a second to compute.
#[derive(Clone, Default)]
pub struct FakeStt {
    pub broken: bool,
    pub wedged: bool,
    pub catch_up_rtf: Option<f64>,
}

type EventStream = ReceiverStream<Result<stt::TranscriptEvent, Status>>;

#[tonic::async_trait]
impl SttService for FakeStt {
    type RecognizeStream = EventStream;

    async fn recognize(
        &self,
        request: Request<Streaming<stt::RecognizeRequest>>,
    ) -> Result<Response<EventStream>, Status> {
        use stt::recognize_request::Request as R;
        let mut input = request.into_inner();
        let Some(R::Config(config)) = input.message().await?.and_then(|r| r.request) else {
            return Err(Status::invalid_argument("config first"));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let (broken, wedged, catch_up_rtf) = (self.broken, self.wedged, self.catch_up_rtf);
        tokio::spawn(async move {
            let mut bytes = 0usize;
            while let Ok(Some(request)) = input.message().await {
                if let Some(R::Audio(chunk)) = request.request {
                    bytes += chunk.audio_data.len();
                    if chunk.is_final {
                        break;
                    }
                }
            }
            if wedged {
                // Keep the sender alive so the stream neither ends nor errors.
                let _open = tx;
                std::future::pending::<()>().await;
                return;
            }
            let end_ms = (bytes / 2 * 1000 / config.sample_rate.max(1) as usize) as i64;
            if let Some(rtf) = catch_up_rtf {
                for (index, start_ms) in (0..end_ms).step_by(1000).enumerate() {
                    let window_end = (start_ms + 1000).min(end_ms);
                    let seconds = (window_end - start_ms) as f64 / 1000.0;
                    tokio::time::sleep(Duration::from_secs_f64(seconds * rtf)).await;
                    let event = stt::TranscriptEvent {
                        session_id: config.session_id.clone(),
                        utterance_id: index as u64 + 1,
                        text: format!("window {}", index + 1),
                        is_final: true,
                        start_ms,
                        end_ms: window_end,
                        sequence_number: index as i64 + 1,
                        confidence: 0.9,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                return;
            }
            let event = |seq: i64, text: &str, is_final: bool| stt::TranscriptEvent {
                session_id: config.session_id.clone(),
                utterance_id: 1,
                text: text.into(),
                is_final,
                start_ms: 0,
                end_ms,
                sequence_number: seq,
                confidence: 0.9,
            };
            let mut events = Vec::new();
            if config.partial_results {
                events.push(event(1, "heard", false));
            }
            let final_seq = if broken { 5 } else { events.len() as i64 + 1 };
            events.push(event(final_seq, &format!("heard {bytes} bytes"), true));
            for event in events {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_capabilities(
        &self,
        _: Request<stt::GetCapabilitiesRequest>,
    ) -> Result<Response<stt::GetCapabilitiesResponse>, Status> {
        Ok(Response::new(stt::GetCapabilitiesResponse {
            capabilities: None,
            resident_models: Vec::new(),
            metrics: HashMap::from([("load".to_string(), 0.0), ("max_sessions".to_string(), 8.0)]),
        }))
    }
}

pub async fn fake_stt(fake: FakeStt) -> FakeServer {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let server = serve_fake(
        Server::builder()
            .add_service(health_service)
            .add_service(SttServiceServer::new(fake)),
        Some(reporter),
    )
    .await;
    server.set_serving(true).await;
    server
}

// ---------------------------------------------------------------- proxy

/// A TCP forwarder in front of a worker; `kill` drops every connection at
/// once, as a crashed worker would.
pub struct Proxy {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy { addr, task }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn kill(&self) {
        self.task.abort();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- freezing

/// A TCP forwarder that can freeze: while frozen no byte passes either way,
/// yet every connection stays open and new ones are accepted, which is what
/// a SIGSTOPped worker looks like from outside (its kernel still completes
/// handshakes and holds the sockets; the process answers nothing).
pub struct FreezableProxy {
    pub addr: SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    task: JoinHandle<()>,
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // Even a close waits for the thaw: a stopped process does not
                // answer a FIN either.
                let _ = frozen.wait_for(|f| !*f).await;
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Bytes read just as the freeze began are held until the thaw.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl FreezableProxy {
    pub async fn start(target: SocketAddr) -> FreezableProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let (frozen, watching) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let watching = watching.clone();
                connections.spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (in_read, in_write) = inbound.into_split();
                    let (out_read, out_write) = outbound.into_split();
                    tokio::join!(
                        pump(in_read, out_write, watching.clone()),
                        pump(out_read, in_write, watching),
                    );
                });
            }
        });
        FreezableProxy { addr, frozen, task }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// SIGSTOP, as seen from the network.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
