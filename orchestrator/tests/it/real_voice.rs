//! A round trip through the orchestrator to the real Piper voice: an
//! in-process tts-worker on `piper-en_US-joe-medium`, the orchestrator in
//! front of it, and `voxctl` (which validates every frame) as the client.
//! Skipped outside CI when the voice is missing; required in CI.

use std::time::Duration;

use crate::common::*;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use voxwire_orchestrator::config::Args;
use voxwire_tts_worker::server::{Args as WorkerArgs, EngineKind};

/// Loading and warming the voice on a loaded 2-core machine is far slower
/// than the tone workers the other tests wait for.
const VOICE_READY: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speak_through_the_orchestrator_with_the_real_voice() {
    let _gate = crate::GATE.enter(module_path!());
    let Some(voice) = voxwire_testkit::model_dir(voxwire_testkit::PIPER_JOE_MEDIUM) else {
        return;
    };
    let worker = tone_worker(WorkerArgs {
        engine: EngineKind::Piper,
        voice: Some(voice),
        ..WorkerArgs::tone_for_tests()
    })
    .await;
    let orch = orchestrator(Args {
        // Synthesis of the first sentence competes with the rest of the
        // machine: do not let a slow first frame fail the turn.
        first_frame_timeout_ms: 60_000,
        frame_timeout_ms: 30_000,
        call_timeout_ms: 30_000,
        ..tts_args(&[worker.address()])
    })
    .await;

    // The orchestrator's health goes SERVING once the worker's does, i.e.
    // once the voice is loaded and warm.
    let mut watch = HealthClient::new(orch.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    let serving = tokio::time::timeout(VOICE_READY, async {
        while let Some(update) = watch.next().await {
            if update.expect("update").status == ServingStatus::Serving as i32 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        serving,
        Ok(true),
        "orchestrator SERVING within {VOICE_READY:?}"
    );
    let (status, body) = orch.http_get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    let spoken = voxctl::speak::via_orchestrator(
        &orch.running.addr.to_string(),
        "Hello from the real voice.",
        "",
    )
    .await
    .expect("speak through the orchestrator");
    assert_eq!(spoken.sample_rate, 48_000);
    assert!(
        spoken.audio_seconds() > 0.5,
        "real speech, not a blip: {:.3} s",
        spoken.audio_seconds()
    );
    let first_audio = spoken.first_audio.expect("first-audio time measured");
    assert!(first_audio <= spoken.total);
    // Speech, not silence: some samples well away from zero.
    let loud = spoken
        .pcm
        .chunks_exact(2)
        .filter(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs() > 1_000)
        .count();
    assert!(loud > 100, "audible samples: {loud}");

    let (status, body) = orch.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("voxwire_orchestrator_turns_total{kind=\"tts\",outcome=\"ok\"} 1"),
        "{body}"
    );
}
