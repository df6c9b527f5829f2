//! Workers that die, wedge, flap, and clients that leave: the real
//! orchestrator and tone workers as processes, faults from outside.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::Code;
use voxwire_proto::service_names;
use voxwire_reliability::client::{self, TtsSession};
use voxwire_reliability::fake::{FakeWorker, Fault};
use voxwire_reliability::process::Signal;
use voxwire_reliability::stack::{
    addresses, tone_workers, Orchestrator, OrchestratorConfig, Worker, CALL_TIMEOUT, FRAME_TIMEOUT,
    LOAD_POLL, SLACK, START,
};
use voxwire_reliability::{wait_for, Error};

/// 40 characters: 1.2 s of audio, paced at real time by --realtime workers.
const LONG: &str = "A long sentence that takes a while here.";
const SHORT: &str = "Hi there.";

async fn serving(orchestrator: &Orchestrator, workers: &[&str]) {
    for address in workers {
        orchestrator
            .wait_state(address, "SERVING", START)
            .await
            .expect("worker SERVING in the orchestrator");
    }
}

/// Opens sessions until one is bound to `address` (StartSession names it).
async fn session_on(orchestrator: &Orchestrator, address: &str) -> TtsSession {
    for _ in 0..40 {
        let session = TtsSession::open(
            orchestrator.channel().await.expect("connect"),
            &client::session_id("on"),
        )
        .await
        .expect("StartSession");
        if session.started.ends_with(address) {
            return session;
        }
        session.close().await.expect("EndSession");
    }
    panic!("no session landed on {address}");
}

/// Runs a long turn on `session` and calls `fault` once 3 frames arrived;
/// returns the turn's outcome and how long after the fault it came.
async fn turn_with_fault(
    session: &mut TtsSession,
    fault: impl FnOnce(),
) -> (Result<client::Turn, Error>, Duration) {
    let (progress, mut seen) = watch::channel(0usize);
    let turn = session.synthesize_observed(LONG, Some(&progress));
    tokio::pin!(turn);
    let mut fault = Some(fault);
    let mut faulted_at = None;
    loop {
        tokio::select! {
            result = &mut turn => {
                let at = faulted_at.expect("the fault was injected before the turn ended");
                return (result, Instant::now().duration_since(at));
            }
            changed = seen.changed(), if fault.is_some() => {
                changed.expect("progress");
                if *seen.borrow() >= 3 {
                    if let Some(fault) = fault.take() {
                        fault();
                        faulted_at = Some(Instant::now());
                    }
                }
            }
        }
    }
}

fn code_of(result: &Result<client::Turn, Error>) -> Option<Code> {
    match result {
        Err(Error::Status(status)) => Some(status.code()),
        _ => None,
    }
}

/// Spreads fresh sessions' turns until `address` has taken some: it is in
/// use again.
async fn used_again(orchestrator: &Orchestrator, address: &str) {
    let before = orchestrator
        .worker(address)
        .await
        .expect("workers")
        .expect("row")
        .dispatched;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let channel = orchestrator.channel().await.expect("connect");
        tasks.push(tokio::spawn(async move {
            let mut session = TtsSession::open(channel, &client::session_id("again")).await?;
            session.synthesize(SHORT).await?;
            session.close().await
        }));
    }
    for task in tasks {
        task.await.expect("join").expect("turn completes");
    }
    let after = orchestrator
        .worker(address)
        .await
        .expect("workers")
        .expect("row")
        .dispatched;
    assert!(after > before, "{address} took no turn after recovering");
}

#[tokio::test]
async fn worker_killed_mid_stream_fails_the_turn_and_the_next_goes_elsewhere() {
    let _gate = crate::GATE.enter(module_path!());
    let mut workers = tone_workers(2, 16, true).expect("workers");
    let orchestrator = Orchestrator::start(OrchestratorConfig::new(&addresses(&workers), &[]))
        .await
        .expect("orchestrator");
    serving(&orchestrator, &[&workers[0].addr, &workers[1].addr]).await;
    let reference = client::reference(&workers[1].addr, SHORT)
        .await
        .expect("ref");
    let baseline = orchestrator.gauges().await.expect("gauges");

    let victim = workers[0].addr.clone();
    let mut session = session_on(&orchestrator, &victim).await;
    let (result, after) = turn_with_fault(&mut session, || {
        workers[0].signal(Signal::Kill).expect("SIGKILL");
    })
    .await;
    assert_eq!(code_of(&result), Some(Code::Unavailable), "{result:?}");
    assert!(after < SLACK, "the failure took {after:?} after the kill");
    let state = orchestrator
        .wait_not_state(&victim, "SERVING", SLACK)
        .await
        .expect("killed worker leaves SERVING");
    assert_ne!(state, "SERVING");

    // The session goes on, on the other worker.
    let turn = session
        .synthesize(SHORT)
        .await
        .expect("next turn completes");
    assert_eq!(turn.audio, reference);

    // Back on the same address: SERVING again and taking work, no restart
    // of the orchestrator.
    workers[0].restart().expect("restart");
    orchestrator
        .wait_state(&victim, "SERVING", START)
        .await
        .expect("restarted worker SERVING");
    used_again(&orchestrator, &victim).await;
    session.close().await.expect("EndSession");
    orchestrator
        .wait_baseline(&baseline, 8.0, Duration::from_secs(10))
        .await
        .expect("no leak");
    for worker in &workers {
        worker
            .wait_idle("tts", Duration::from_secs(5))
            .await
            .expect("worker idle");
    }
}

#[tokio::test]
async fn worker_stopped_mid_stream_fails_by_the_deadline_and_is_used_again_after_sigcont() {
    let _gate = crate::GATE.enter(module_path!());
    let workers = tone_workers(2, 16, true).expect("workers");
    // A long EndSession deadline: moving the session off the wedged worker
    // must not wait for it.
    let orchestrator = Orchestrator::start(
        OrchestratorConfig::new(&addresses(&workers), &[]).flag("--call-timeout-ms", 5_000),
    )
    .await
    .expect("orchestrator");
    serving(&orchestrator, &[&workers[0].addr, &workers[1].addr]).await;
    let reference = client::reference(&workers[1].addr, SHORT)
        .await
        .expect("ref");
    let baseline = orchestrator.gauges().await.expect("gauges");

    let victim = workers[0].addr.clone();
    let mut session = session_on(&orchestrator, &victim).await;
    let (result, after) = turn_with_fault(&mut session, || {
        workers[0].signal(Signal::Stop).expect("SIGSTOP");
    })
    .await;
    // HTTP/2 keepalive drops the stopped worker's connection (UNAVAILABLE)
    // before the frame deadline would (DEADLINE_EXCEEDED); either ends it.
    assert!(
        matches!(
            code_of(&result),
            Some(Code::Unavailable | Code::DeadlineExceeded)
        ),
        "{result:?}"
    );
    assert!(
        after < FRAME_TIMEOUT + SLACK,
        "the failure took {after:?} after SIGSTOP (frame deadline {FRAME_TIMEOUT:?})"
    );
    let row = orchestrator
        .worker(&victim)
        .await
        .expect("workers")
        .expect("row");
    assert_ne!(
        row.state, "SERVING",
        "the wedged worker is out of service at once"
    );

    // Later turns go elsewhere, without waiting on the wedged worker.
    let started = Instant::now();
    let turn = session
        .synthesize(SHORT)
        .await
        .expect("next turn completes");
    assert_eq!(turn.audio, reference);
    assert!(
        started.elapsed() < Duration::from_millis(2_500),
        "the next turn took {:?}",
        started.elapsed()
    );
    let row = orchestrator
        .worker(&victim)
        .await
        .expect("workers")
        .expect("row");
    assert_ne!(row.state, "SERVING", "still wedged, still not SERVING");

    workers[0].signal(Signal::Cont).expect("SIGCONT");
    orchestrator
        .wait_state(&victim, "SERVING", LOAD_POLL + CALL_TIMEOUT + SLACK * 4)
        .await
        .expect("SERVING again after SIGCONT");
    // The cancelled stream's capacity came back on the worker itself.
    workers[0]
        .wait_idle("tts", Duration::from_secs(5))
        .await
        .expect("capacity back");
    used_again(&orchestrator, &victim).await;
    session.close().await.expect("EndSession");
    orchestrator
        .wait_baseline(&baseline, 8.0, Duration::from_secs(10))
        .await
        .expect("no leak");
}

#[tokio::test]
async fn a_flapping_worker_never_fails_a_turn() {
    let _gate = crate::GATE.enter(module_path!());
    let flapper = FakeWorker::start(Fault::None).await.expect("fake");
    let steady = Worker::tone(None, 64, false).expect("tone worker");
    steady
        .wait_serving(service_names::TTS, START)
        .await
        .expect("tone SERVING");
    let orchestrator = Orchestrator::start(OrchestratorConfig::new(
        &[flapper.addr.clone(), steady.addr.clone()],
        &[],
    ))
    .await
    .expect("orchestrator");
    serving(&orchestrator, &[&flapper.addr, &steady.addr]).await;
    let baseline = orchestrator.gauges().await.expect("gauges");

    let health = flapper.health.clone();
    let flapping = tokio::spawn(async move {
        for i in 0..30 {
            health.set_serving(i % 2 == 1).await;
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
        health.set_serving(true).await;
    });
    // Fresh sessions, so every turn is a new choice between the two, for as
    // long as the flapping lasts.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..6 {
        let channel = orchestrator.channel().await.expect("connect");
        let done = std::sync::Arc::clone(&done);
        clients.push(tokio::spawn(async move {
            let mut turns = 0;
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let id = client::session_id(&format!("flap{i}"));
                let mut session = TtsSession::open(channel.clone(), &id)
                    .await
                    .expect("StartSession while the worker flaps");
                session
                    .synthesize(SHORT)
                    .await
                    .expect("turn completes while the worker flaps");
                session.close().await.expect("EndSession");
                turns += 1;
            }
            turns
        }));
    }
    flapping.await.expect("flapping task");
    done.store(true, std::sync::atomic::Ordering::Release);
    let mut turns = 0;
    for client in clients {
        turns += client.await.expect("client task");
    }
    eprintln!(
        "{turns} turns while flapping, {} on the flapping worker",
        flapper.calls()
    );
    let metrics = orchestrator.metrics().await.expect("metrics");
    let flips = voxwire_reliability::http::sum(
        &metrics,
        "voxwire_orchestrator_worker_health_transitions_total",
        &["to=\"NOT_SERVING\""],
    );
    assert!(
        flips >= 5.0,
        "the orchestrator saw {flips} NOT_SERVING transitions"
    );
    assert!(
        flapper.calls() > 0,
        "the flapping worker was never used while SERVING"
    );
    orchestrator
        .wait_baseline(&baseline, 8.0, Duration::from_secs(10))
        .await
        .expect("no leak");
}

#[tokio::test]
async fn a_client_leaving_mid_turn_cancels_the_worker_stream_and_returns_capacity() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = Worker::tone(None, 16, true).expect("tone worker");
    let orchestrator = Orchestrator::start(OrchestratorConfig::new(
        std::slice::from_ref(&worker.addr),
        &[],
    ))
    .await
    .expect("orchestrator");
    serving(&orchestrator, &[&worker.addr]).await;
    let baseline = orchestrator.gauges().await.expect("gauges");

    let id = client::session_id("leaver");
    {
        let mut session = TtsSession::open(orchestrator.channel().await.expect("connect"), &id)
            .await
            .expect("StartSession");
        let mut frames = session.start(LONG).await.expect("Synthesize");
        for _ in 0..3 {
            frames.message().await.expect("frame").expect("a frame");
        }
        let load = worker.load("tts").await.expect("load");
        assert_eq!(
            load.get("active_streams"),
            Some(&1.0),
            "the turn is on the worker"
        );
        // The client goes away: stream, session handle and connection dropped.
    }
    worker
        .wait_idle("tts", Duration::from_secs(3))
        .await
        .expect("the worker-side stream was cancelled");
    wait_for(
        "in-flight turns back to 0",
        Duration::from_secs(3),
        || async {
            let g = orchestrator.gauges().await.ok()?;
            (g.turns_in_flight == 0.0 && g.endpoint_in_flight == 0).then_some(())
        },
    )
    .await
    .expect("orchestrator capacity returned");

    // The session is not held by the dead turn: the same client session,
    // reconnected, speaks again.
    let mut again = TtsSession::open(
        orchestrator.channel().await.expect("connect"),
        &format!("{id}-b"),
    )
    .await
    .expect("StartSession");
    again
        .synthesize(SHORT)
        .await
        .expect("turn after the client left");
    again.close().await.expect("EndSession");
    let end = orchestrator.gauges().await.expect("gauges");
    // The abandoned session stays open (the client never ended it) until
    // --session-idle-seconds reaps it: one session above baseline, no more.
    assert_eq!(
        end.active_sessions,
        baseline.active_sessions + 1.0,
        "{end:?}"
    );
    assert_eq!(end.turns_in_flight, 0.0);
}
