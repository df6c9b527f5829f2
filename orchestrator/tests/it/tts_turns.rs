//! TTS turns through the orchestrator against tone workers and scripted
//! fakes: round trip, many messages, start orders, worker loss, readiness,
//! retry rules, protocol violations, probing without health, load.

use crate::common::*;
use tokio_stream::StreamExt;
use tonic::Code;
use voxwire_orchestrator::config::Args;
use voxwire_orchestrator::endpoint::EndpointState;
use voxwire_orchestrator::metrics;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{StartSessionRequest, TextChunk};
use voxwire_proto::tts_stream::TtsStreamValidator;
use voxwire_tts_worker::server::Args as WorkerArgs;

#[tokio::test]
async fn speak_round_trip_and_side_port() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    let frames = speak_ok(
        &mut orch.voxwire(),
        "round-trip",
        "Hello there. How are you?",
    )
    .await;
    assert!(frames.len() > 2);
    assert!(frames.iter().all(|f| f.session_id == "round-trip"));

    let (status, _) = orch.http_get("/healthz").await;
    assert_eq!(status, 200);
    let (status, _) = orch.http_get("/readyz").await;
    assert_eq!(status, 200);
    let (status, body) = orch.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("voxwire_orchestrator_turns_total{kind=\"tts\",outcome=\"ok\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("voxwire_orchestrator_first_audio_seconds_count{kind=\"tts\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("voxwire_orchestrator_active_sessions 1"),
        "{body}"
    );
    let (status, body) = orch.http_get("/api/workers").await;
    assert_eq!(status, 200);
    let workers: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(workers[0]["address"], worker.address());
    assert_eq!(workers[0]["kind"], "tts");
    assert_eq!(workers[0]["state"], "SERVING");
    assert_eq!(workers[0]["dispatched"], 1);

    // The orchestrator also serves tts.TTSService, relaying to its pool.
    let mut tts = TtsServiceClient::new(orch.channel.clone());
    tts.start_session(StartSessionRequest {
        session_id: "relay".into(),
        ..Default::default()
    })
    .await
    .expect("relayed StartSession");
    let duplicate = tts
        .start_session(StartSessionRequest {
            session_id: "relay".into(),
            ..Default::default()
        })
        .await
        .expect_err("duplicate");
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    let chunks = vec![
        TextChunk {
            session_id: "relay".into(),
            text: "Relayed ".into(),
            is_final: false,
            sequence_number: 1,
        },
        TextChunk {
            session_id: "relay".into(),
            text: "speech.".into(),
            is_final: true,
            sequence_number: 2,
        },
    ];
    let mut stream = tts
        .synthesize(tokio_stream::iter(chunks))
        .await
        .expect("relayed Synthesize")
        .into_inner();
    let mut validator = TtsStreamValidator::new("relay");
    while let Some(frame) = stream.next().await {
        validator
            .observe(&frame.expect("frame"))
            .expect("valid frame");
    }
    validator.finish().expect("final frame");
    assert!(validator.frames_seen() > 1);
}

#[tokio::test]
async fn hundred_messages_in_one_session() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    let mut client = orch.voxwire();
    for i in 0..100 {
        speak_ok(&mut client, "chatty", &format!("Message number {i}.")).await;
    }
    // A session Speak opened is nobody's to end: each turn's worker session
    // ends with it (issue 22), while the client session goes on.
    assert_eq!(worker.active_sessions(), 0.0);
    assert_eq!(orch.running.app.sessions.len(), 1);
    assert_eq!(
        orch.running
            .app
            .metrics
            .counter(metrics::TURNS, &[("kind", "tts"), ("outcome", "ok")]),
        100
    );
}

#[tokio::test]
async fn orchestrator_first_then_worker_converges() {
    let _gate = crate::GATE.enter(module_path!());
    // Reserve a port for the worker that does not exist yet.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").expect("reserve");
    let address = reserved.local_addr().expect("addr").to_string();
    drop(reserved);
    let orch = orchestrator(tts_args(std::slice::from_ref(&address))).await;
    let (status, _) = orch.http_get("/readyz").await;
    assert_eq!(status, 503, "not ready without a worker");
    let _worker = tone_worker(WorkerArgs {
        listen: address.clone(),
        ..WorkerArgs::tone_for_tests()
    })
    .await;
    orch.wait_ready().await;
    speak_ok(&mut orch.voxwire(), "late-worker", "Finally.").await;
    assert_eq!(dispatched(&orch.tts_pool().snapshot(), &address), 1);
}

#[tokio::test]
async fn worker_killed_mid_stream_fails_the_turn_and_the_next_goes_elsewhere() {
    let _gate = crate::GATE.enter(module_path!());
    let doomed = tone_worker(WorkerArgs {
        realtime: true,
        ..WorkerArgs::tone_for_tests()
    })
    .await;
    let proxy = Proxy::start(doomed.running.addr).await;
    let orch = orchestrator(with_registry(tts_args(&[proxy.address()]))).await;
    orch.wait_ready().await;
    let mut client = orch.voxwire();
    speak_ok(&mut client, "victim", "Short.").await;

    // A second worker announces itself through the registry.
    let survivor = tone_worker(WorkerArgs::tone_for_tests()).await;
    let lease = orch
        .register("tts", &survivor.address(), 30)
        .await
        .expect("register");
    assert_eq!(lease.lease_seconds, 30);
    orch.wait_tts("both serving", |all| serving_count(all) == 2)
        .await;

    // Session affinity keeps the session on the proxied worker; kill it
    // after the first frame.
    let long = "This sentence goes on for a while. ".repeat(6);
    let mut stream = client
        .speak(voxwire_proto::voxwire::v1::SpeakRequest {
            session_id: "victim".into(),
            text: long,
            ..Default::default()
        })
        .await
        .expect("speak")
        .into_inner();
    let first = stream.next().await.expect("a frame").expect("ok frame");
    assert!(!first.audio_data.is_empty());
    proxy.kill();
    let mut error = None;
    while let Some(item) = stream.next().await {
        if let Err(status) = item {
            error = Some(status);
            break;
        }
    }
    let error = error.expect("the turn ends with an error, not a clean end");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("failed after"), "{error:?}");
    assert!(
        error.message().contains(&proxy.address()),
        "names the worker: {error:?}"
    );

    // The next turn of the same session goes to the survivor.
    speak_ok(&mut client, "victim", "Still here.").await;
    assert_eq!(
        dispatched(&orch.tts_pool().snapshot(), &survivor.address()),
        1
    );
}

/// Regression: a worker killed before its first frame reached the client
/// (connection reset mid-call) surfaced as UNKNOWN "h2 protocol error", which
/// is not retried, so the turn failed although another worker was SERVING
/// (found by scripts/compose-e2e.sh, `docker kill` of a TTS container).
#[tokio::test]
async fn worker_killed_before_the_first_frame_is_retried_elsewhere() {
    let _gate = crate::GATE.enter(module_path!());
    let stalled = FakeTts::new(Mode::Stall);
    let doomed = fake_tts(stalled.clone(), true).await;
    let proxy = Proxy::start(doomed.addr).await;
    let orch = orchestrator(with_registry(tts_args(&[proxy.address()]))).await;
    orch.wait_ready().await;
    let mut client = orch.voxwire();
    let turn = tokio::spawn(async move { speak(&mut client, "victim", "Hello there.").await });
    tokio::time::timeout(WAIT, async {
        while stalled.streams_polled() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the turn reached the stalled worker");

    // Only now a second worker, so the first attempt surely went to the doomed one.
    let survivor = tone_worker(WorkerArgs::tone_for_tests()).await;
    orch.register("tts", &survivor.address(), 30)
        .await
        .expect("register");
    let survivor_address = survivor.address();
    orch.wait_tts("survivor serving", |all| {
        state_of(all, &survivor_address) == Some(EndpointState::Serving)
    })
    .await;
    proxy.kill();

    let spoken = turn.await.expect("turn task");
    assert!(
        spoken.error.is_none(),
        "no frame had reached the client: retried elsewhere, not failed: {:?}",
        spoken.error
    );
    assert!(spoken.frames.last().is_some_and(|f| f.is_final));
    assert_eq!(
        dispatched(&orch.tts_pool().snapshot(), &survivor_address),
        1
    );
}

#[tokio::test]
async fn not_serving_worker_gets_no_work() {
    let _gate = crate::GATE.enter(module_path!());
    let tone = tone_worker(WorkerArgs::tone_for_tests()).await;
    let fake = FakeTts::new(Mode::Valid);
    let server = fake_tts(fake.clone(), true).await;
    let orch = orchestrator(tts_args(&[tone.address(), server.address()])).await;
    orch.wait_tts("both serving", |all| serving_count(all) == 2)
        .await;
    server.set_serving(false).await;
    let fake_address = server.address();
    orch.wait_tts("fake NOT_SERVING", |all| {
        state_of(all, &fake_address) == Some(EndpointState::NotServing)
    })
    .await;
    let mut client = orch.voxwire();
    for i in 0..20 {
        speak_ok(&mut client, &format!("s{i}"), "Hello.").await;
    }
    assert_eq!(fake.start_calls() + fake.synth_calls(), 0);
    assert_eq!(dispatched(&orch.tts_pool().snapshot(), &fake_address), 0);

    // Back to SERVING: it is used again (the check above could fail).
    server.set_serving(true).await;
    orch.wait_tts("fake SERVING again", |all| {
        state_of(all, &fake_address) == Some(EndpointState::Serving)
    })
    .await;
    for i in 0..40 {
        speak_ok(&mut client, &format!("t{i}"), "Hello.").await;
        if fake.synth_calls() > 0 {
            break;
        }
    }
    assert!(fake.synth_calls() > 0);
}

/// Regression: `stt.STTService` said SERVING on an orchestrator with no STT
/// pool, because every service name followed the overall readiness.
#[tokio::test]
async fn each_relayed_service_is_serving_only_with_a_serving_pool_of_its_kind() {
    let _gate = crate::GATE.enter(module_path!());
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let fake = FakeTts::new(Mode::Valid);
    let server = fake_tts(fake, true).await;
    let orch = orchestrator(tts_args(&[server.address()])).await;
    wait_serving(&orch.channel, "").await;
    wait_serving(&orch.channel, "tts.TTSService").await;
    let mut health = HealthClient::new(orch.channel.clone());
    let check = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let stt = health.check(check("stt.STTService")).await.expect("check");
    assert_eq!(stt.into_inner().status, ServingStatus::NotServing as i32);

    // The TTS pool's only worker leaves SERVING: its service follows.
    server.set_serving(false).await;
    let fake_address = server.address();
    orch.wait_tts("fake NOT_SERVING", |all| {
        state_of(all, &fake_address) == Some(EndpointState::NotServing)
    })
    .await;
    let followed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let tts = health.check(check("tts.TTSService")).await.expect("check");
            if tts.into_inner().status == ServingStatus::NotServing as i32 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        followed.is_ok(),
        "tts.TTSService left SERVING with its pool"
    );
}

#[tokio::test]
async fn invalid_argument_is_never_retried_but_unavailable_is() {
    let _gate = crate::GATE.enter(module_path!());
    let bad = [
        FakeTts::new(Mode::InvalidArgument),
        FakeTts::new(Mode::InvalidArgument),
    ];
    let servers = [
        fake_tts(bad[0].clone(), true).await,
        fake_tts(bad[1].clone(), true).await,
    ];
    let orch = orchestrator(tts_args(&[servers[0].address(), servers[1].address()])).await;
    orch.wait_tts("both serving", |all| serving_count(all) == 2)
        .await;
    let spoken = speak(&mut orch.voxwire(), "bad", "Anything.").await;
    assert_eq!(spoken.error.expect("fails").code(), Code::InvalidArgument);
    assert_eq!(
        bad[0].synth_calls() + bad[1].synth_calls(),
        1,
        "one attempt only"
    );

    let busy = [
        FakeTts::new(Mode::Unavailable),
        FakeTts::new(Mode::Unavailable),
    ];
    let servers = [
        fake_tts(busy[0].clone(), true).await,
        fake_tts(busy[1].clone(), true).await,
    ];
    let orch = orchestrator(tts_args(&[servers[0].address(), servers[1].address()])).await;
    orch.wait_tts("both serving", |all| serving_count(all) == 2)
        .await;
    let spoken = speak(&mut orch.voxwire(), "busy", "Anything.").await;
    assert_eq!(spoken.error.expect("fails").code(), Code::Unavailable);
    let max_attempts = Args::for_tests().retry_max_attempts as usize;
    assert_eq!(busy[0].synth_calls() + busy[1].synth_calls(), max_attempts);
    assert!(
        busy[0].synth_calls() > 0 && busy[1].synth_calls() > 0,
        "retried on the other worker"
    );
    assert_eq!(
        orch.running.app.metrics.counter(
            metrics::RETRIES,
            &[("kind", "tts"), ("code", "unavailable")]
        ),
        max_attempts as u64 - 1
    );
}

#[tokio::test]
async fn invalid_frames_end_the_turn_and_the_session_goes_on() {
    let _gate = crate::GATE.enter(module_path!());
    let faulty = FakeTts::new(Mode::EmptyNonFinalOnce);
    let server = fake_tts(faulty.clone(), true).await;
    let orch = orchestrator(tts_args(&[server.address()])).await;
    orch.wait_ready().await;
    let mut client = orch.voxwire();
    let spoken = speak(&mut client, "victim", "Hello.").await;
    let error = spoken.error.expect("turn fails");
    assert_eq!(error.code(), Code::Internal);
    assert!(
        error.message().contains("TTS-FRAME-EMPTY-NONFINAL"),
        "{error:?}"
    );
    assert!(error.message().contains(&server.address()), "{error:?}");
    assert!(
        spoken.frames.iter().all(|f| !f.audio_data.is_empty()),
        "no empty frame forwarded"
    );
    assert_eq!(faulty.synth_calls(), 1, "a violation is not retried");
    assert_eq!(
        orch.running
            .app
            .metrics
            .counter(metrics::VIOLATIONS, &[("rule", "TTS-FRAME-EMPTY-NONFINAL")]),
        1
    );
    // Same session, next turn: fine.
    speak_ok(&mut client, "victim", "Again.").await;
    // The client session went on; its worker session, opened by a Speak,
    // ends with each turn (issue 22), so each turn opened one.
    assert_eq!(faulty.start_calls(), 2);
}

#[tokio::test]
async fn worker_without_health_service_is_probed_and_used() {
    let _gate = crate::GATE.enter(module_path!());
    let legacy = FakeTts::new(Mode::Valid);
    let server = fake_tts(legacy.clone(), false).await;
    let orch = orchestrator(tts_args(&[server.address()])).await;
    orch.wait_ready().await;
    let snapshot = orch.tts_pool().snapshot();
    assert!(
        snapshot[0].health_probe,
        "readiness from GetCapabilities probes"
    );
    speak_ok(&mut orch.voxwire(), "legacy", "Hello.").await;
    assert_eq!(legacy.synth_calls(), 1);
}

#[tokio::test]
async fn turns_go_to_the_less_loaded_worker() {
    let _gate = crate::GATE.enter(module_path!());
    let busy = tone_worker(WorkerArgs {
        max_sessions: 4,
        ..WorkerArgs::tone_for_tests()
    })
    .await;
    let idle = tone_worker(WorkerArgs::tone_for_tests()).await;
    // Three of four sessions taken on `busy`: it reports load 0.75.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", busy.address()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    wait_serving(&channel, "tts.TTSService").await;
    for i in 0..3 {
        TtsServiceClient::new(channel.clone())
            .start_session(StartSessionRequest {
                session_id: format!("hog{i}"),
                ..Default::default()
            })
            .await
            .expect("session");
    }
    let orch = orchestrator(tts_args(&[busy.address(), idle.address()])).await;
    let busy_address = busy.address();
    orch.wait_tts("both serving, load known", |all| {
        serving_count(all) == 2
            && all
                .iter()
                .any(|e| e.address == busy_address && e.reported_load.load == Some(0.75))
    })
    .await;
    let mut client = orch.voxwire();
    for i in 0..10 {
        speak_ok(&mut client, &format!("s{i}"), "Hello.").await;
    }
    let all = orch.tts_pool().snapshot();
    assert_eq!(dispatched(&all, &busy.address()), 0, "{all:?}");
    assert_eq!(dispatched(&all, &idle.address()), 10, "{all:?}");
}

#[tokio::test]
async fn dns_targets_are_resolved() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let port = worker.running.addr.port();
    let orch = orchestrator(tts_args(&[format!("dns://localhost:{port}")])).await;
    orch.wait_ready().await;
    let address = worker.address();
    orch.wait_tts("resolved endpoint serving", |all| {
        state_of(all, &address) == Some(EndpointState::Serving)
    })
    .await;
    speak_ok(&mut orch.voxwire(), "dns", "Resolved.").await;
}

#[tokio::test]
async fn expired_lease_drops_the_worker() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(with_registry(Args {
        max_lease_seconds: 1,
        ..Args::for_tests()
    }))
    .await;
    let granted = orch
        .register("tts", &worker.address(), 30)
        .await
        .expect("register");
    assert_eq!(granted.lease_seconds, 1, "shortened to the maximum");
    orch.wait_ready().await;
    speak_ok(&mut orch.voxwire(), "leased", "Hello.").await;
    // Not renewed: gone within the lease (plus the wait's slack).
    orch.wait_tts("lease expired", |all| all.is_empty()).await;
    let bad = orch
        .register("video", &worker.address(), 1)
        .await
        .expect_err("unknown kind");
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn session_forgotten_by_the_worker_is_reopened() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    let mut client = orch.voxwire();
    // An explicit session (StartSession) stays open on its worker between turns.
    TtsServiceClient::new(orch.channel.clone())
        .start_session(StartSessionRequest {
            session_id: "forgotten".into(),
            ..Default::default()
        })
        .await
        .expect("StartSession");
    speak_ok(&mut client, "forgotten", "One.").await;
    assert_eq!(worker.active_sessions(), 1.0);
    // The worker drops the session behind the orchestrator's back (as its
    // idle reaping or a restart would).
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", worker.address()))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    TtsServiceClient::new(channel)
        .end_session(voxwire_proto::tts::EndSessionRequest {
            session_id: "forgotten".into(),
        })
        .await
        .expect("end");
    assert_eq!(worker.active_sessions(), 0.0);
    speak_ok(&mut client, "forgotten", "Two.").await;
    assert_eq!(worker.active_sessions(), 1.0);
}

#[tokio::test]
async fn drain_finishes_the_turn_in_flight_then_stops() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs {
        realtime: true,
        ..WorkerArgs::tone_for_tests()
    })
    .await;
    let mut orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    let mut client = orch.voxwire();
    let mut stream = client
        .speak(voxwire_proto::voxwire::v1::SpeakRequest {
            session_id: "draining".into(),
            text: "A sentence or two to finish. And one more.".into(),
            ..Default::default()
        })
        .await
        .expect("speak")
        .into_inner();
    let mut validator = TtsStreamValidator::new("draining");
    let first = stream.next().await.expect("frame").expect("ok");
    validator.observe(&first).expect("valid");
    let _ = orch.stop.take().expect("stop").send(());
    while let Some(frame) = stream.next().await {
        validator
            .observe(&frame.expect("frames keep coming while draining"))
            .expect("valid");
    }
    validator.finish().expect("the turn in flight completed");
    let Orchestrator { running, .. } = orch;
    tokio::time::timeout(WAIT, running.wait())
        .await
        .expect("stops within the bound")
        .expect("clean stop");
}

#[tokio::test]
async fn stream_ending_without_final_is_a_violation() {
    let _gate = crate::GATE.enter(module_path!());
    let faulty = FakeTts::new(Mode::NoFinal);
    let server = fake_tts(faulty.clone(), true).await;
    let orch = orchestrator(tts_args(&[server.address()])).await;
    orch.wait_ready().await;
    let spoken = speak(&mut orch.voxwire(), "cut", "Hello.").await;
    let error = spoken.error.expect("turn fails");
    assert_eq!(error.code(), Code::Internal);
    assert!(error.message().contains("TTS-FINAL-MISSING"), "{error:?}");
    assert!(!spoken.frames.is_empty(), "the valid frames were relayed");
    assert_eq!(
        orch.running
            .app
            .metrics
            .counter(metrics::VIOLATIONS, &[("rule", "TTS-FINAL-MISSING")]),
        1
    );
}

#[tokio::test]
async fn cancelled_relay_call_frees_the_session_for_the_next() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    let mut tts = TtsServiceClient::new(orch.channel.clone());
    tts.start_session(StartSessionRequest {
        session_id: "cancel".into(),
        ..Default::default()
    })
    .await
    .expect("session");
    let chunk = |text: String| TextChunk {
        session_id: "cancel".into(),
        text,
        is_final: true,
        sequence_number: 1,
    };
    let mut stream = tts
        .synthesize(tokio_stream::iter(vec![chunk(
            "Words to fill. ".repeat(1300),
        )]))
        .await
        .expect("synthesize")
        .into_inner();
    stream.next().await.expect("frame").expect("ok");
    drop(stream);
    let next = tokio::time::timeout(WAIT, async {
        let mut stream = tts
            .synthesize(tokio_stream::iter(vec![chunk("The next request.".into())]))
            .await
            .expect("synthesize")
            .into_inner();
        let mut validator = TtsStreamValidator::new("cancel");
        while let Some(frame) = stream.next().await {
            validator.observe(&frame.expect("frame")).expect("valid");
        }
        validator.finish()
    })
    .await;
    assert!(matches!(next, Ok(Ok(()))), "{next:?}");
}

#[tokio::test]
async fn relayed_synthesize_streams_text_so_audio_starts_early() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    let mut tts = TtsServiceClient::new(orch.channel.clone());
    tts.start_session(StartSessionRequest {
        session_id: "early".into(),
        ..Default::default()
    })
    .await
    .expect("session");
    let (chunks, rx) = tokio::sync::mpsc::channel(4);
    let chunk = |text: &str, is_final: bool, seq: i64| TextChunk {
        session_id: "early".into(),
        text: text.into(),
        is_final,
        sequence_number: seq,
    };
    chunks
        .send(chunk("The first sentence is complete. ", false, 1))
        .await
        .expect("send");
    let mut stream = tts
        .synthesize(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("synthesize")
        .into_inner();
    let mut validator = TtsStreamValidator::new("early");
    // Input still open: the first frame comes anyway.
    let first = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("a frame before the end of input")
        .expect("frame")
        .expect("ok");
    validator.observe(&first).expect("valid");
    chunks
        .send(chunk("And the second.", true, 2))
        .await
        .expect("send");
    while let Some(frame) = stream.next().await {
        validator.observe(&frame.expect("frame")).expect("valid");
    }
    validator.finish().expect("final frame");

    // A chunk naming another session is refused with its rule.
    let (chunks, rx) = tokio::sync::mpsc::channel(4);
    chunks.send(chunk("Hello. ", false, 1)).await.expect("send");
    let mut other = chunk("Intruder.", true, 2);
    other.session_id = "someone-else".into();
    chunks.send(other).await.expect("send");
    let mut stream = tts
        .synthesize(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("synthesize")
        .into_inner();
    let mut error = None;
    while let Some(item) = stream.next().await {
        if let Err(status) = item {
            error = Some(status);
        }
    }
    let error = error.expect("refused");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    assert!(error.message().contains("TTS-CHUNK-SESSION"), "{error:?}");
}
