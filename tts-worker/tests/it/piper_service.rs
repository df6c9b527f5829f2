//! The TTS worker with the real Piper voice, over gRPC: health goes
//! NOT_SERVING -> SERVING across the load, frames are valid by the proto
//! validator, the first frame comes before the client's last chunk, and
//! empty input ends with exactly one final.

use std::time::{Duration, Instant};

use crate::common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use voxwire_proto::tts::*;
use voxwire_proto::tts_stream::{FrameKind, TtsStreamValidator};
use voxwire_tts_worker::server::{start, Args, EngineKind};

fn piper_args() -> Option<Args> {
    let models = voxwire_testkit::model_dir(voxwire_testkit::PIPER_JOE_MEDIUM)?;
    Some(Args {
        engine: EngineKind::Piper,
        voice: Some(models),
        ..Args::tone_for_tests()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_the_voice_is_warm() {
    let _gate = crate::GATE.enter(module_path!());
    let Some(args) = piper_args() else {
        return;
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("starts");
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", running.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: "tts.TTSService".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    // Loading the voice takes far longer than answering a Watch: the first
    // status is NOT_SERVING, then SERVING once the warm-up synthesis ran.
    let first = watch.next().await.expect("first").expect("ok");
    assert_eq!(first.status, ServingStatus::NotServing as i32);
    let next = tokio::time::timeout(Duration::from_secs(120), watch.next())
        .await
        .expect("SERVING in time")
        .expect("stream")
        .expect("ok");
    assert_eq!(next.status, ServingStatus::Serving as i32);
    assert!(running.worker.is_ready());
    stop.send(()).expect("stop");
    let after = tokio::time::timeout(Duration::from_secs(10), watch.next())
        .await
        .expect("an update at drain")
        .expect("stream")
        .expect("ok");
    assert_eq!(after.status, ServingStatus::NotServing as i32);
    running.wait().await.expect("clean exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_voice_streams_valid_frames_before_the_input_ends() {
    let _gate = crate::GATE.enter(module_path!());
    let Some(args) = piper_args() else {
        return;
    };
    let fixture = start_worker(args).await;
    fixture.start_session("s").await;
    let mut tts = fixture.tts();
    let (tx, rx) = mpsc::channel(4);
    tx.send(chunk("s", "The first sentence is ready now.", false, 1))
        .await
        .expect("send");
    let sent = Instant::now();
    let mut frames = tts
        .synthesize(ReceiverStream::new(rx))
        .await
        .expect("synthesize")
        .into_inner();
    let mut validator = TtsStreamValidator::new("s");
    let first = tokio::time::timeout(Duration::from_secs(30), frames.next())
        .await
        .expect("first frame before the last chunk is sent")
        .expect("open")
        .expect("frame");
    eprintln!("first frame after {} ms", sent.elapsed().as_millis());
    assert_eq!(validator.observe(&first).expect("valid"), FrameKind::Data);
    tx.send(chunk("s", " And here is the second one.", true, 2))
        .await
        .expect("send");
    let mut audio_bytes = first.audio_data.len();
    while let Some(frame) = frames.next().await {
        let frame = frame.expect("frame");
        validator.observe(&frame).expect("valid");
        audio_bytes += frame.audio_data.len();
    }
    validator.finish().expect("exactly one final");
    // Two short sentences are a few seconds of 48 kHz speech, not silence.
    let seconds = audio_bytes as f64 / 96_000.0;
    assert!((1.5..15.0).contains(&seconds), "{seconds} s of audio");
    for text in ["", "   "] {
        let frames = synthesize(&mut tts, "s", vec![chunk("s", text, true, 1)]).await;
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].1, FrameKind::EndMarker);
    }
    let models = tts
        .list_models(ListModelsRequest {})
        .await
        .expect("models")
        .into_inner()
        .models;
    assert!(models
        .iter()
        .any(|m| m.model_id == "en_US-joe-medium" && m.is_loaded && m.family == "piper"));
}
