//! Load: the short soak (CI form of `just soak`) and overload past the
//! workers' total capacity.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tonic::Code;
use voxwire_reliability::client::{self, TtsSession};
use voxwire_reliability::soak::{self, SoakConfig};
use voxwire_reliability::stack::{
    addresses, tone_workers, Orchestrator, OrchestratorConfig, READY_WAIT, SLACK, START,
};
use voxwire_reliability::Error;

/// The two tests load the machine; one at a time keeps both meaningful.
static SERIAL: Mutex<()> = Mutex::const_new(());

#[tokio::test]
async fn short_soak_loses_no_frame_and_fails_no_turn() {
    let _gate = crate::GATE.enter(module_path!());
    let _serial = SERIAL.lock().await;
    let report = soak::run(&SoakConfig::short()).await.expect("soak runs");
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&report.json()).unwrap_or_default()
    );
    soak::verdict(&report).expect("soak verdict");
}

/// 40 characters: 1.2 s of audio, paced at real time.
const LONG: &str = "A long sentence that takes a while here.";

#[tokio::test]
async fn overload_is_refused_at_once_and_does_not_stall_admitted_sessions() {
    let _gate = crate::GATE.enter(module_path!());
    let _serial = SERIAL.lock().await;
    // Two workers of 4 sessions each: room for 8.
    let workers = tone_workers(2, 4, true).expect("workers");
    let orchestrator = Orchestrator::start(OrchestratorConfig::new(&addresses(&workers), &[]))
        .await
        .expect("orchestrator");
    for worker in &workers {
        orchestrator
            .wait_state(&worker.addr, "SERVING", START)
            .await
            .expect("SERVING");
    }
    let reference = client::reference(&workers[0].addr, LONG)
        .await
        .expect("reference");
    let baseline = orchestrator.gauges().await.expect("gauges");
    let pid = orchestrator.service.pid;

    // Fill every slot, and start a long turn on each.
    let mut admitted = Vec::new();
    for i in 0..8 {
        let session = TtsSession::open(
            orchestrator.channel().await.expect("connect"),
            &client::session_id(&format!("in{i}")),
        )
        .await
        .expect("StartSession within capacity");
        admitted.push(session);
    }
    let turns: Vec<_> = admitted
        .into_iter()
        .map(|mut session| {
            tokio::spawn(async move {
                let turn = session.synthesize(LONG).await;
                (session, turn)
            })
        })
        .collect();

    // Meanwhile, bursts of clients past capacity: each refused with
    // RESOURCE_EXHAUSTED in bound, none waits.
    let channel = orchestrator.channel().await.expect("connect");
    let mut rss = Vec::new();
    for burst in 0..3 {
        let mut tasks = Vec::new();
        for i in 0..300 {
            let channel = channel.clone();
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                let id = client::session_id(&format!("over{burst}-{i}"));
                let result = TtsSession::open(channel, &id).await.map(|_| ());
                (result, started.elapsed())
            }));
        }
        for task in tasks {
            let (result, took) = task.await.expect("join");
            match result {
                Err(Error::Status(status)) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}")
                }
                other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
            }
            // Refused by a full worker at once, or after waiting for room
            // up to --ready-wait-ms: never longer.
            assert!(took < READY_WAIT + SLACK * 2, "refusal took {took:?}");
        }
        rss.push(voxwire_reliability::process::rss_kib(pid).unwrap_or(0));
    }
    eprintln!("orchestrator RSS after each burst of 300 refused clients: {rss:?} KiB");
    // Memory bounded: the second and third bursts cost (almost) nothing more.
    let (first, last) = (rss[0] as f64, rss[2] as f64);
    assert!(
        last <= first * 1.10,
        "RSS grew {first} -> {last} KiB across bursts"
    );

    // The admitted sessions were not stalled: their turns complete intact,
    // in about their audio's duration.
    for task in turns {
        let (session, turn) = task.await.expect("join");
        let turn = turn.expect("admitted turn completes");
        assert_eq!(turn.audio, reference);
        assert!(
            turn.elapsed < Duration::from_millis(1_200) + SLACK * 2,
            "took {:?}",
            turn.elapsed
        );
        session.close().await.expect("EndSession");
    }
    // Capacity freed: a new client gets in.
    let mut late = TtsSession::open(
        orchestrator.channel().await.expect("connect"),
        &client::session_id("late"),
    )
    .await
    .expect("admitted once there is room");
    late.synthesize("Hi.").await.expect("turn");
    late.close().await.expect("EndSession");
    orchestrator
        .wait_baseline(&baseline, 16.0, Duration::from_secs(10))
        .await
        .expect("no leak");
}
