//! Fake TTS workers, each with one fault, served in the test process while
//! the orchestrator under test is a real process; and a server that answers
//! every connection with garbage bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use voxwire_proto::audio::FrameFormat;
use voxwire_proto::tts::tts_service_server::{TtsService, TtsServiceServer};
use voxwire_proto::tts::*;
use voxwire_proto::tts_stream::Framer;
use voxwire_proto::{metrics as keys, service_names};
use voxwire_service::Health;

use crate::{Error, Result};

/// What the fake does wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: a correct worker (its health can still be flipped).
    None,
    /// The first frame carries no audio and is not final (TTS-FRAME-EMPTY-NONFINAL).
    Violation,
    /// A few frames, then the stream stays open with no final frame.
    NeverFinal,
    /// A few frames, then the stream ends without a final frame.
    EndsWithoutFinal,
    /// The first frame comes only after this long.
    SlowFirstFrame(Duration),
}

/// Audio per turn: 5 frames of 20 ms at 48 kHz.
const TURN_SAMPLES: usize = 960 * 5;

#[derive(Clone)]
struct FakeTts {
    fault: Fault,
    calls: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
}

/// Counts a call in flight until the call's task ends.
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn tone() -> Vec<i16> {
    (0..TURN_SAMPLES)
        .map(|i| ((i as f32 * 0.05).sin() * 5000.0) as i16)
        .collect()
}

#[tonic::async_trait]
impl TtsService for FakeTts {
    async fn start_session(
        &self,
        _request: Request<StartSessionRequest>,
    ) -> std::result::Result<Response<StartSessionResponse>, Status> {
        Ok(Response::new(StartSessionResponse {
            success: true,
            message: "fake".into(),
        }))
    }

    async fn end_session(
        &self,
        _request: Request<EndSessionRequest>,
    ) -> std::result::Result<Response<EndSessionResponse>, Status> {
        Ok(Response::new(EndSessionResponse { success: true }))
    }

    type SynthesizeStream = ReceiverStream<std::result::Result<AudioFrame, Status>>;

    async fn synthesize(
        &self,
        request: Request<Streaming<TextChunk>>,
    ) -> std::result::Result<Response<Self::SynthesizeStream>, Status> {
        self.calls.fetch_add(1, Ordering::AcqRel);
        self.active.fetch_add(1, Ordering::AcqRel);
        let active = Active(Arc::clone(&self.active));
        let mut input = request.into_inner();
        let mut session = String::new();
        while let Some(chunk) = input.message().await? {
            session = chunk.session_id.clone();
            if chunk.is_final {
                break;
            }
        }
        let (tx, rx) = mpsc::channel(8);
        let fault = self.fault;
        tokio::spawn(async move {
            let _active = active;
            let mut framer = Framer::new(session, FrameFormat::DEFAULT);
            let mut frames = framer.push(&tone());
            if let Fault::SlowFirstFrame(delay) = fault {
                tokio::time::sleep(delay).await;
            }
            if fault == Fault::Violation {
                if let Some(first) = frames.first_mut() {
                    first.audio_data = Default::default();
                }
            }
            let cut = matches!(fault, Fault::NeverFinal | Fault::EndsWithoutFinal);
            if cut {
                frames.truncate(3);
            }
            for frame in frames {
                if tx.send(Ok(frame)).await.is_err() {
                    return;
                }
            }
            match fault {
                // Holds the stream open until the caller gives up on it.
                Fault::NeverFinal => tx.closed().await,
                Fault::EndsWithoutFinal => {}
                _ => {
                    let _ = tx.send(Ok(framer.finish())).await;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn control(
        &self,
        _request: Request<ControlRequest>,
    ) -> std::result::Result<Response<ControlResponse>, Status> {
        Ok(Response::new(ControlResponse {
            success: true,
            message: "fake".into(),
            timestamp_ms: 0,
        }))
    }

    async fn list_models(
        &self,
        _request: Request<ListModelsRequest>,
    ) -> std::result::Result<Response<ListModelsResponse>, Status> {
        Err(Status::unimplemented("fake worker"))
    }

    async fn load_model(
        &self,
        _request: Request<LoadModelRequest>,
    ) -> std::result::Result<Response<LoadModelResponse>, Status> {
        Err(Status::unimplemented("fake worker"))
    }

    async fn unload_model(
        &self,
        _request: Request<UnloadModelRequest>,
    ) -> std::result::Result<Response<UnloadModelResponse>, Status> {
        Err(Status::unimplemented("fake worker"))
    }

    async fn get_capabilities(
        &self,
        _request: Request<GetCapabilitiesRequest>,
    ) -> std::result::Result<Response<GetCapabilitiesResponse>, Status> {
        let active = self.active.load(Ordering::Acquire) as f64;
        let metrics = [
            (keys::ACTIVE_STREAMS, active),
            (keys::ACTIVE_SESSIONS, 0.0),
            (keys::QUEUED_REQUESTS, 0.0),
            (keys::MAX_SESSIONS, 64.0),
            (keys::LOAD, active / 64.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Ok(Response::new(GetCapabilitiesResponse {
            metrics,
            ..Default::default()
        }))
    }
}

/// A running fake worker; stops when dropped.
pub struct FakeWorker {
    pub addr: String,
    pub health: Health,
    calls: Arc<AtomicUsize>,
    active: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl FakeWorker {
    /// Serves a fake with `fault` on a free loopback port, SERVING at once.
    pub async fn start(fault: Fault) -> Result<FakeWorker> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Io("binding a fake worker".into(), e))?;
        let addr: SocketAddr = listener
            .local_addr()
            .map_err(|e| Error::Io("fake worker address".into(), e))?;
        let (health, health_service) = Health::new(&[service_names::TTS]).await;
        health.set_serving(true).await;
        let calls = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let service = FakeTts {
            fault,
            calls: Arc::clone(&calls),
            active: Arc::clone(&active),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            Server::builder()
                .add_service(health_service)
                .add_service(TtsServiceServer::new(service))
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        Ok(FakeWorker {
            addr: addr.to_string(),
            health,
            calls,
            active,
            _stop: stop,
        })
    }

    /// Synthesize calls received.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Acquire)
    }

    /// Synthesize calls still running (a cancelled call ends when its
    /// stream is dropped by the caller).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// A TCP server that answers every connection with bytes that are not
/// HTTP/2 (nor anything else), and reads whatever it is sent.
pub struct GarbageServer {
    pub addr: String,
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl GarbageServer {
    pub async fn start() -> Result<GarbageServer> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::Io("binding the garbage server".into(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::Io("garbage server address".into(), e))?
            .to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(async move {
                    let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
                    let mut sink = [0u8; 4096];
                    for _ in 0..64 {
                        if socket.write_all(&junk).await.is_err() {
                            return;
                        }
                        match tokio::time::timeout(
                            Duration::from_millis(50),
                            socket.read(&mut sink),
                        )
                        .await
                        {
                            Ok(Ok(0)) | Ok(Err(_)) => return,
                            _ => {}
                        }
                    }
                });
            }
        });
        Ok(GarbageServer {
            addr,
            connections,
            task,
        })
    }
}

impl Drop for GarbageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
