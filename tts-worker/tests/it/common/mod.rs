//! Shared by the TTS worker's gRPC tests: an in-process worker and a
//! validating client.
#![allow(dead_code)]

use std::time::Duration;

use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::*;
use voxwire_proto::tts_stream::{FrameKind, TtsStreamValidator};
use voxwire_tts_worker::server::{start, Args, RunningWorker};

pub struct Fixture {
    pub running: RunningWorker,
    pub stop: oneshot::Sender<()>,
    pub channel: Channel,
}

pub async fn start_worker(args: Args) -> Fixture {
    let (stop, stopped) = oneshot::channel();
    let running = start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("worker starts");
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let fixture = Fixture {
        running,
        stop,
        channel,
    };
    fixture.wait_serving().await;
    fixture
}

impl Fixture {
    pub fn tts(&self) -> TtsServiceClient<Channel> {
        TtsServiceClient::new(self.channel.clone())
    }

    /// Waits on the health Watch stream (never a sleep) for SERVING.
    pub async fn wait_serving(&self) {
        let mut health = HealthClient::new(self.channel.clone());
        let mut watch = health
            .watch(HealthCheckRequest {
                service: "tts.TTSService".into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let deadline = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(update) = watch.next().await {
                if update.expect("update").status == ServingStatus::Serving as i32 {
                    return;
                }
            }
            panic!("watch ended before SERVING");
        });
        deadline.await.expect("SERVING within 120 s");
    }

    pub async fn start_session(&self, id: &str) {
        self.tts()
            .start_session(StartSessionRequest {
                session_id: id.into(),
                ..Default::default()
            })
            .await
            .expect("session starts");
    }
}

pub fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("the call should fail").code()
}

pub fn chunk(session: &str, text: &str, is_final: bool, seq: i64) -> TextChunk {
    TextChunk {
        session_id: session.into(),
        text: text.into(),
        is_final,
        sequence_number: seq,
    }
}

/// Runs one Synthesize call with `chunks`, validating every frame.
pub async fn synthesize(
    client: &mut TtsServiceClient<Channel>,
    session: &str,
    chunks: Vec<TextChunk>,
) -> Vec<(AudioFrame, FrameKind)> {
    let mut frames = client
        .synthesize(tokio_stream::iter(chunks))
        .await
        .expect("synthesize")
        .into_inner();
    let mut validator = TtsStreamValidator::new(session);
    let mut out = Vec::new();
    while let Some(frame) = frames.next().await {
        let frame = frame.expect("frame");
        let kind = validator.observe(&frame).expect("valid frame");
        out.push((frame, kind));
    }
    validator.finish().expect("stream has its final");
    out
}

pub async fn metric(client: &mut TtsServiceClient<Channel>, key: &str) -> f64 {
    let caps = client
        .get_capabilities(GetCapabilitiesRequest {})
        .await
        .expect("capabilities")
        .into_inner();
    caps.metrics.get(key).copied().expect("metric reported")
}
