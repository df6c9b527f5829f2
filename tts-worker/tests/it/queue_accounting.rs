//! The load figures a worker reports stay true when clients cancel.

use std::time::Duration;

use crate::common::*;
use voxwire_tts_worker::server::Args;

fn queued(fixture: &Fixture) -> f64 {
    fixture.running.worker.load_metrics()["queued_requests"]
}

/// Regression (issue 22, Medium 7): cancelling 20 concurrent Synthesize calls
/// left `queued_requests` at 17 for good, and the orchestrator's selection
/// kept avoiding the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_synthesize_calls_leave_queued_requests_at_zero() {
    let _gate = crate::GATE.enter(module_path!());
    let fixture = start_worker(Args {
        inference_slots: Some(1),
        ..Args::tone_for_tests()
    })
    .await;
    // Long sentences: one slot, so the others wait in the queue.
    let text = "tone ".repeat(3_000);
    let mut calls = Vec::new();
    for i in 0..20 {
        let id = format!("queued-{i}");
        fixture.start_session(&id).await;
        let mut client = fixture.tts();
        let chunks = vec![chunk(&id, &text, true, 1)];
        calls.push(tokio::spawn(async move {
            let mut frames = client
                .synthesize(tokio_stream::iter(chunks))
                .await
                .expect("synthesize")
                .into_inner();
            while let Some(frame) = tokio_stream::StreamExt::next(&mut frames).await {
                frame.expect("frame");
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while queued(&fixture) < 10.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the calls never queued: {}",
            queued(&fixture)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for call in &calls {
        call.abort();
    }
    for call in calls {
        let _ = call.await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while queued(&fixture) != 0.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "queued_requests stuck at {}",
            queued(&fixture)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
