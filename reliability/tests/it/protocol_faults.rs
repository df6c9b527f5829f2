//! Workers that break the protocol, speak garbage, never finish, or are too
//! slow: the client gets a clear status within a bound, the worker-side call
//! is cancelled, and nothing leaks.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tonic::Code;
use voxwire_proto::service_names;
use voxwire_reliability::client::{self, TtsSession};
use voxwire_reliability::fake::{FakeWorker, Fault, GarbageServer};
use voxwire_reliability::stack::{
    Orchestrator, OrchestratorConfig, Worker, FIRST_FRAME_TIMEOUT, FRAME_TIMEOUT, SLACK, START,
};
use voxwire_reliability::{wait_for, Error};

const TEXT: &str = "Hello there.";

async fn alone(fault: Fault) -> (FakeWorker, Orchestrator) {
    let fake = FakeWorker::start(fault).await.expect("fake");
    let orchestrator = Orchestrator::start(OrchestratorConfig::new(
        std::slice::from_ref(&fake.addr),
        &[],
    ))
    .await
    .expect("orchestrator");
    orchestrator
        .wait_state(&fake.addr, "SERVING", START)
        .await
        .expect("fake SERVING");
    (fake, orchestrator)
}

/// One turn on a fresh session: its status, and how long it took.
async fn one_turn(orchestrator: &Orchestrator) -> (tonic::Status, Duration) {
    let mut session = TtsSession::open(
        orchestrator.channel().await.expect("connect"),
        &client::session_id("fault"),
    )
    .await
    .expect("StartSession");
    let started = Instant::now();
    let result = session.synthesize(TEXT).await;
    let took = started.elapsed();
    session.close().await.expect("EndSession");
    match result {
        Err(Error::Status(status)) => (status, took),
        other => panic!("expected a status, got {other:?}"),
    }
}

async fn no_leak(orchestrator: &Orchestrator, fake: &FakeWorker) {
    wait_for(
        "the fake's calls to be cancelled",
        Duration::from_secs(5),
        || async { (fake.active() == 0).then_some(()) },
    )
    .await
    .expect("the worker-side call ended");
    wait_for(
        "turns in flight back to 0",
        Duration::from_secs(5),
        || async {
            let g = orchestrator.gauges().await.ok()?;
            (g.turns_in_flight == 0.0 && g.endpoint_in_flight == 0 && g.active_sessions == 0.0)
                .then_some(())
        },
    )
    .await
    .expect("orchestrator gauges back to baseline");
}

#[tokio::test]
async fn a_protocol_violation_ends_the_turn_with_internal_naming_the_rule() {
    let _gate = crate::GATE.enter(module_path!());
    let (fake, orchestrator) = alone(Fault::Violation).await;
    let (status, took) = one_turn(&orchestrator).await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("TTS-FRAME-EMPTY-NONFINAL"),
        "{status:?}"
    );
    assert!(took < SLACK, "took {took:?}");
    let metrics = orchestrator.metrics().await.expect("metrics");
    assert!(metrics.contains(
        "voxwire_orchestrator_protocol_violations_total{rule=\"TTS-FRAME-EMPTY-NONFINAL\"} 1"
    ));
    // Not retried: the violation is the worker's, and a retry would repeat it.
    assert_eq!(fake.calls(), 1);
    no_leak(&orchestrator, &fake).await;
}

#[tokio::test]
async fn a_stream_ending_without_its_final_frame_is_a_violation() {
    let _gate = crate::GATE.enter(module_path!());
    let (fake, orchestrator) = alone(Fault::EndsWithoutFinal).await;
    let (status, took) = one_turn(&orchestrator).await;
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("broke the protocol"),
        "{status:?}"
    );
    assert!(took < SLACK, "took {took:?}");
    no_leak(&orchestrator, &fake).await;
}

#[tokio::test]
async fn a_worker_that_never_sends_is_final_fails_by_the_frame_deadline() {
    let _gate = crate::GATE.enter(module_path!());
    let (fake, orchestrator) = alone(Fault::NeverFinal).await;
    let (status, took) = one_turn(&orchestrator).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("after 3 frames"), "{status:?}");
    assert!(
        took >= FRAME_TIMEOUT && took < FRAME_TIMEOUT + SLACK,
        "took {took:?}, frame deadline {FRAME_TIMEOUT:?}"
    );
    // The stream the worker held open was cancelled from our side.
    no_leak(&orchestrator, &fake).await;
    // And it is used again once it answers a load poll.
    orchestrator
        .wait_state(&fake.addr, "SERVING", SLACK)
        .await
        .expect("SERVING again");
}

#[tokio::test]
async fn a_slow_worker_fails_by_the_first_frame_deadline_and_its_turns_go_elsewhere() {
    let _gate = crate::GATE.enter(module_path!());
    let slow = Fault::SlowFirstFrame(FIRST_FRAME_TIMEOUT + Duration::from_secs(3));
    // Alone: every attempt times out; the client hears DEADLINE_EXCEEDED
    // after the attempts (3) each waited the first-frame deadline.
    let (fake, orchestrator) = alone(slow).await;
    let (status, took) = one_turn(&orchestrator).await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let bound = (FIRST_FRAME_TIMEOUT + Duration::from_millis(400)) * 3 + SLACK;
    assert!(took < bound, "took {took:?} (bound {bound:?})");
    no_leak(&orchestrator, &fake).await;
    drop(orchestrator);

    // With a healthy worker beside it: every turn completes, those that
    // tried the slow one within one first-frame deadline more.
    let tone = Worker::tone(None, 64, false).expect("tone");
    tone.wait_serving(service_names::TTS, START)
        .await
        .expect("tone SERVING");
    let orchestrator = Orchestrator::start(OrchestratorConfig::new(
        &[fake.addr.clone(), tone.addr.clone()],
        &[],
    ))
    .await
    .expect("orchestrator");
    for address in [&fake.addr, &tone.addr] {
        orchestrator
            .wait_state(address, "SERVING", START)
            .await
            .expect("SERVING");
    }
    let calls_before = fake.calls();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let channel = orchestrator.channel().await.expect("connect");
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            client::speak(channel, &client::session_id("slow"), TEXT)
                .await
                .expect("turn completes on the healthy worker");
            started.elapsed()
        }));
    }
    for task in tasks {
        let took = task.await.expect("join");
        assert!(took < FIRST_FRAME_TIMEOUT + SLACK, "took {took:?}");
    }
    assert!(fake.calls() > calls_before, "no turn tried the slow worker");
    wait_for("slow calls cancelled", Duration::from_secs(5), || async {
        (fake.active() == 0).then_some(())
    })
    .await
    .expect("cancelled");
}

#[tokio::test]
async fn a_garbage_speaking_endpoint_is_never_used_and_not_hammered() {
    let _gate = crate::GATE.enter(module_path!());
    let garbage = GarbageServer::start().await.expect("garbage server");
    let tone = Worker::tone(None, 64, false).expect("tone");
    tone.wait_serving(service_names::TTS, START)
        .await
        .expect("tone SERVING");
    let orchestrator = Orchestrator::start(OrchestratorConfig::new(
        &[garbage.addr.clone(), tone.addr.clone()],
        &[],
    ))
    .await
    .expect("orchestrator");
    orchestrator
        .wait_state(&tone.addr, "SERVING", START)
        .await
        .expect("SERVING");
    let reference = client::reference(&tone.addr, TEXT)
        .await
        .expect("reference");
    let started = Instant::now();
    for _ in 0..20 {
        let turn = client::speak(
            orchestrator.channel().await.expect("connect"),
            &client::session_id("garbage"),
            TEXT,
        )
        .await
        .expect("turn completes");
        assert_eq!(turn.audio, reference);
    }
    let row = orchestrator
        .worker(&garbage.addr)
        .await
        .expect("workers")
        .expect("garbage row");
    assert_ne!(row.state, "SERVING");
    assert_eq!(row.dispatched, 0);
    // Reconnects back off (--connect-backoff-*), they do not spin.
    let elapsed = started.elapsed().as_secs_f64() + 1.0;
    let connections = garbage.connections.load(Ordering::Acquire) as f64;
    assert!(
        connections < 10.0 * elapsed + 10.0,
        "{connections} connections in {elapsed:.1} s"
    );
}
