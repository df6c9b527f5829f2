//! A frozen worker costs no turn: the real orchestrator and two tone
//! workers as processes, one SIGSTOPped while idle, while sessions are being
//! opened on it, and mid-stream. Every turn through the relayed
//! `tts.TTSService` and through `Speak` must succeed within 1.5 s (mid-stream
//! aside: audio already left, so that one turn fails by its bound), and the
//! worker must rejoin by itself after SIGCONT.
//! (STT Transcribe and Converse with a frozen worker are in
//! orchestrator/tests/it/frozen_workers.rs, with in-process workers.)

use std::time::{Duration, Instant};

use tonic::transport::Channel;
use voxwire_reliability::client::{self, TtsSession};
use voxwire_reliability::process::Signal;
use voxwire_reliability::stack::{
    addresses, tone_workers, Orchestrator, OrchestratorConfig, ATTEMPT_FLOOR, KEEPALIVE_INTERVAL,
    KEEPALIVE_TIMEOUT, LOAD_POLL, LOAD_POLL_TIMEOUT, SLACK, START,
};
use voxwire_reliability::Error;

const SHORT: &str = "Hi there.";
/// The goal: p99 (here: every) turn with one of two workers frozen.
const TURN_BOUND: Duration = Duration::from_millis(1_500);
/// Concurrent client sessions per round.
const CLIENTS: usize = 8;
/// Rounds per path: 16 turns at the freeze, 16 after.
const ROUNDS: usize = 2;

#[derive(Debug, Clone, Copy)]
enum Path {
    Relay,
    Speak,
}

/// One turn on a fresh session, the session's opening included.
async fn turn(channel: Channel, path: Path) -> Result<Duration, Error> {
    let started = Instant::now();
    match path {
        Path::Relay => {
            let mut session = TtsSession::open(channel, &client::session_id("frz")).await?;
            session.synthesize(SHORT).await?;
            let took = started.elapsed();
            session.close().await?;
            Ok(took)
        }
        Path::Speak => {
            SPEAK_SESSIONS.with(|n| n.set(n.get() + 1));
            client::speak(channel, &client::session_id("frzspeak"), SHORT).await?;
            Ok(started.elapsed())
        }
    }
}

/// `CLIENTS` turns at once, `ROUNDS` times; every one must succeed within
/// [`TURN_BOUND`]. Returns every turn's time.
async fn rounds(orchestrator: &Orchestrator, path: Path, tag: &str) -> Vec<Duration> {
    let mut times = Vec::new();
    for _ in 0..ROUNDS {
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let channel = orchestrator.channel().await.expect("connect");
            tasks.push(tokio::spawn(turn(channel, path)));
        }
        for task in tasks {
            let took = task
                .await
                .expect("join")
                .unwrap_or_else(|e| panic!("{tag}: a {path:?} turn failed: {e}"));
            times.push(took);
        }
    }
    times.sort();
    let max = times.last().copied().unwrap_or_default();
    eprintln!(
        "{tag}: {} {path:?} turns, median {:?}, max {max:?}",
        times.len(),
        times[times.len() / 2]
    );
    assert!(
        max <= TURN_BOUND,
        "{tag}: a {path:?} turn took {max:?} (bound {TURN_BOUND:?}): {times:?}"
    );
    times
}

/// The gauges back at `baseline`, but for the client sessions the Speak
/// turns named: a named Speak session stays open (holding no worker
/// session) until --session-idle-seconds, as designed (docs/security.md).
async fn no_leak(orchestrator: &Orchestrator, baseline: &voxwire_reliability::stack::Gauges) {
    let named = SPEAK_SESSIONS.with(std::cell::Cell::get) as f64;
    let expected = voxwire_reliability::stack::Gauges {
        active_sessions: baseline.active_sessions + named,
        ..baseline.clone()
    };
    orchestrator
        .wait_baseline(&expected, 8.0, Duration::from_secs(10))
        .await
        .expect("no leak");
}

thread_local! {
    /// Speak sessions opened since the test's baseline. Per thread: each
    /// test runs on its own thread, its tasks on its current-thread runtime.
    static SPEAK_SESSIONS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

async fn baseline(orchestrator: &Orchestrator) -> voxwire_reliability::stack::Gauges {
    SPEAK_SESSIONS.with(|n| n.set(0));
    orchestrator.gauges().await.expect("gauges")
}

/// The matrix settings, but the orchestrator's default call, first-frame
/// and frame deadlines (5 s, 10 s, 5 s) and attempt-deadline cap: with
/// those a frozen worker used to cost a turn 5 s (issue 19); the goal holds
/// with the defaults, not only with the matrix's short deadlines.
fn defaults(tts: &[String]) -> OrchestratorConfig {
    OrchestratorConfig::new(tts, &[])
        .flag("--call-timeout-ms", 5_000)
        .flag("--first-frame-timeout-ms", 10_000)
        .flag("--frame-timeout-ms", 5_000)
        .flag("--attempt-deadline-cap-ms", 3_000)
}

async fn both_serving(orchestrator: &Orchestrator, workers: &[String]) {
    for address in workers {
        orchestrator
            .wait_state(address, "SERVING", START)
            .await
            .expect("worker SERVING in the orchestrator");
    }
}

/// Waits for `address` to leave SERVING and returns how long it took.
async fn time_to_leave_serving(orchestrator: &Orchestrator, address: &str) -> (Duration, String) {
    let started = Instant::now();
    let state = orchestrator
        .wait_not_state(address, "SERVING", Duration::from_secs(10))
        .await
        .expect("the frozen worker leaves SERVING");
    (started.elapsed(), state)
}

/// SIGCONT, then SERVING again within the bound and taking turns.
async fn rejoins(orchestrator: &Orchestrator, victim: &voxwire_reliability::stack::Worker) {
    victim.signal(Signal::Cont).expect("SIGCONT");
    let thawed = Instant::now();
    orchestrator
        .wait_state(&victim.addr, "SERVING", SLACK * 4)
        .await
        .expect("SERVING again after SIGCONT");
    eprintln!("SERVING again {:?} after SIGCONT", thawed.elapsed());
    let before = orchestrator
        .worker(&victim.addr)
        .await
        .expect("workers")
        .expect("row")
        .dispatched;
    rounds(orchestrator, Path::Speak, "after SIGCONT").await;
    let after = orchestrator
        .worker(&victim.addr)
        .await
        .expect("workers")
        .expect("row")
        .dispatched;
    assert!(after > before, "the thawed worker takes turns again");
}

#[tokio::test]
async fn sigstop_while_idle_is_seen_within_a_second_and_costs_no_turn() {
    let _gate = crate::GATE.enter(module_path!());
    let workers = tone_workers(2, 64, false).expect("workers");
    let all = addresses(&workers);
    let orchestrator = Orchestrator::start(defaults(&all))
        .await
        .expect("orchestrator");
    both_serving(&orchestrator, &all).await;
    rounds(&orchestrator, Path::Speak, "warm-up").await;
    let baseline = baseline(&orchestrator).await;

    let victim = &workers[0];
    victim.signal(Signal::Stop).expect("SIGSTOP");
    // No traffic: only keepalive and the load poll can tell.
    let (detected, state) = time_to_leave_serving(&orchestrator, &victim.addr).await;
    eprintln!("idle SIGSTOP: {state} after {detected:?}");
    let bound = (KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT).max(LOAD_POLL + LOAD_POLL_TIMEOUT) + SLACK;
    assert!(
        detected < bound,
        "still SERVING {detected:?} after SIGSTOP (bound {bound:?})"
    );
    for path in [Path::Relay, Path::Speak] {
        rounds(&orchestrator, path, "idle SIGSTOP").await;
    }
    rejoins(&orchestrator, victim).await;
    no_leak(&orchestrator, &baseline).await;
}

/// SIGSTOP just as sessions are opened: before anything has noticed, half
/// of them are offered to the stopped worker, whose StartSession (or first
/// frame) never comes; each moves to the other worker at its attempt
/// deadline (or when keepalive drops the connection, whichever is first).
#[tokio::test]
async fn sigstop_during_start_session_moves_those_sessions_within_the_attempt_deadline() {
    let _gate = crate::GATE.enter(module_path!());
    let workers = tone_workers(2, 64, false).expect("workers");
    let all = addresses(&workers);
    let orchestrator = Orchestrator::start(defaults(&all))
        .await
        .expect("orchestrator");
    both_serving(&orchestrator, &all).await;
    rounds(&orchestrator, Path::Relay, "warm-up").await;
    let baseline = baseline(&orchestrator).await;
    let victim = &workers[0];
    for path in [Path::Relay, Path::Speak] {
        victim.signal(Signal::Stop).expect("SIGSTOP");
        let times = rounds(&orchestrator, path, "SIGSTOP at StartSession").await;
        let moved = times.iter().filter(|t| **t >= ATTEMPT_FLOOR / 2).count();
        eprintln!(
            "{moved} of {} turns reached the stopped worker first",
            times.len()
        );
        rejoins(&orchestrator, victim).await;
    }
    no_leak(&orchestrator, &baseline).await;
}

/// Mid-stream the turn has sent audio and is never retried: it fails, by
/// keepalive (UNAVAILABLE) or the frame deadline (DEADLINE_EXCEEDED),
/// whichever comes first; the session's next turn and every other goes to
/// the running worker within the bound.
#[tokio::test]
async fn sigstop_mid_stream_fails_that_turn_in_bound_and_no_other() {
    let _gate = crate::GATE.enter(module_path!());
    let workers = tone_workers(2, 64, true).expect("workers");
    let all = addresses(&workers);
    let orchestrator = Orchestrator::start(defaults(&all))
        .await
        .expect("orchestrator");
    both_serving(&orchestrator, &all).await;
    let victim = &workers[0];
    // A session on the victim (StartSession names the worker).
    let mut session = None;
    for _ in 0..40 {
        let s = TtsSession::open(
            orchestrator.channel().await.expect("connect"),
            &client::session_id("mid"),
        )
        .await
        .expect("StartSession");
        if s.started.ends_with(&victim.addr) {
            session = Some(s);
            break;
        }
        s.close().await.expect("EndSession");
    }
    let mut session = session.expect("a session on the victim");
    let mut frames = session
        .start("A long sentence that takes a while here.")
        .await
        .expect("Synthesize");
    for _ in 0..3 {
        frames.message().await.expect("frame").expect("a frame");
    }
    victim.signal(Signal::Stop).expect("SIGSTOP");
    let stopped = Instant::now();
    let status = loop {
        match frames.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the turn completed on a stopped worker"),
            Err(status) => break status,
        }
    };
    let failed_after = stopped.elapsed();
    eprintln!(
        "mid-stream SIGSTOP: {:?} after {failed_after:?}",
        status.code()
    );
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "{status:?}"
    );
    assert!(
        failed_after < KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + SLACK,
        "the turn failed {failed_after:?} after SIGSTOP"
    );
    let started = Instant::now();
    session.synthesize(SHORT).await.expect("the next turn");
    assert!(
        started.elapsed() <= TURN_BOUND,
        "the session's next turn took {:?}",
        started.elapsed()
    );
    rounds(&orchestrator, Path::Speak, "mid-stream SIGSTOP").await;
    rejoins(&orchestrator, victim).await;
    session.close().await.expect("EndSession");
}
