//! Hostile and careless clients on default flags (issue 22): nobody
//! hijacks the pools through the registry, and careless calls do not leave
//! capacity held on the workers.

use crate::common::*;
use tonic::Code;
use voxwire_orchestrator::config::Args;
use voxwire_service::credentials::Secret;
use voxwire_tts_worker::server::Args as WorkerArgs;

/// Regression (issue 22, High 1): Register accepted any address from anyone
/// on default flags, and a rogue worker reporting load 0 got other clients'
/// turns.
#[tokio::test]
async fn a_rogue_worker_cannot_register_on_default_flags() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let rogue = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    for token in [None, Some(REGISTRY_TOKEN)] {
        let refused = register_with(&orch.channel, token, "tts", &rogue.address(), 30)
            .await
            .expect_err("registration is off unless configured");
        assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
        assert!(
            refused.message().contains("--registry-token"),
            "{refused:?}"
        );
    }
    let addresses: Vec<String> = orch
        .tts_pool()
        .snapshot()
        .into_iter()
        .map(|e| e.address)
        .collect();
    assert_eq!(addresses, vec![worker.address()], "only the static worker");
}

/// Regression (issue 22, High 1): with a token on, every client token could
/// register a worker too.
#[tokio::test]
async fn a_client_token_does_not_register_a_worker() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(with_registry(Args {
        auth_token: Some(Secret::new("client-token").expect("token")),
        ..Args::for_tests()
    }))
    .await;
    let anonymous = register_with(&orch.channel, None, "tts", &worker.address(), 30)
        .await
        .expect_err("no credentials");
    assert_eq!(anonymous.code(), Code::Unauthenticated, "{anonymous:?}");
    let client = register_with(
        &orch.channel,
        Some("client-token"),
        "tts",
        &worker.address(),
        30,
    )
    .await
    .expect_err("a client's token");
    assert_eq!(client.code(), Code::PermissionDenied, "{client:?}");
    assert!(orch.tts_pool().is_empty());

    orch.register("tts", &worker.address(), 30)
        .await
        .expect("the registry token registers");
    orch.wait_ready().await;
}

/// Regression (issue 22, High 1): the orchestrator accepted and dialled
/// 169.254.169.254:80, a cloud metadata address. Refused addresses never
/// join a pool, so nothing ever connects to them.
#[tokio::test]
async fn metadata_and_unlisted_addresses_are_refused_before_any_connect() {
    let _gate = crate::GATE.enter(module_path!());
    let orch = orchestrator(with_registry(Args {
        registry_allow: "10.0.0.0/8,0.0.0.0/0".into(),
        ..Args::for_tests()
    }))
    .await;
    for address in [
        "169.254.169.254:80",
        "[fe80::1]:50061",
        "[::ffff:169.254.169.254]:80",
    ] {
        let refused = orch.register("tts", address, 30).await.expect_err(address);
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{address}: {refused:?}"
        );
    }
    let named = orch
        .register("tts", "metadata.google.internal:80", 30)
        .await
        .expect_err("host names are refused");
    assert_eq!(named.code(), Code::InvalidArgument, "{named:?}");
    assert!(
        orch.tts_pool().is_empty(),
        "{:?}",
        orch.tts_pool().snapshot()
    );

    // A listener outside a narrow allow-list is never dialled either.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let narrow = orchestrator(with_registry(Args {
        registry_allow: "10.0.0.0/8".into(),
        ..Args::for_tests()
    }))
    .await;
    let address = listener.local_addr().expect("addr").to_string();
    let refused = narrow
        .register("tts", &address, 30)
        .await
        .expect_err("outside the allow-list");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("--registry-allow"),
        "{refused:?}"
    );
    assert!(narrow.tts_pool().is_empty());
}

/// Polls `probe` until it holds, under [`WAIT`].
async fn eventually(what: &str, probe: impl Fn() -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !probe() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}");
}

/// Regression (issue 22, High 3): each Speak with an empty or new session id
/// held a worker session for --session-idle-seconds, so 64 careless calls
/// filled a default worker and every new session got RESOURCE_EXHAUSTED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_careless_speak_calls_leave_worker_sessions_at_baseline() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    let baseline = worker.active_sessions();
    for batch in 0..10 {
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..20 {
            let mut client = orch.voxwire();
            calls.spawn(async move {
                let request = voxwire_proto::voxwire::v1::SpeakRequest {
                    // Half without an id, half with a fresh one each time.
                    session_id: if i % 2 == 0 {
                        String::new()
                    } else {
                        format!("careless-{batch}-{i}")
                    },
                    text: "A careless client says this once.".into(),
                    ..Default::default()
                };
                let mut frames = client.speak(request).await.expect("speak").into_inner();
                let first = tokio_stream::StreamExt::next(&mut frames)
                    .await
                    .expect("a frame");
                first.expect("the worker has room");
                // Every fourth client walks away after its first frame.
                if i % 4 != 3 {
                    while let Some(frame) = tokio_stream::StreamExt::next(&mut frames).await {
                        frame.expect("frames");
                    }
                }
            });
        }
        while let Some(done) = calls.join_next().await {
            done.expect("call task");
        }
    }
    eventually("worker sessions back at baseline", || {
        worker.active_sessions() == baseline
    })
    .await;
    // The sessions without an id are forgotten; the named ones keep no
    // worker session between turns.
    eventually("one-shot sessions forgotten", || {
        orch.running.app.sessions.len() == 100
    })
    .await;
    speak_ok(&mut orch.voxwire(), "after-the-careless", "Still room.").await;
}

/// A named session opened by Speak keeps its worker between turns, without
/// holding a worker session while idle.
#[tokio::test]
async fn a_named_speak_session_returns_to_its_worker() {
    let _gate = crate::GATE.enter(module_path!());
    let first = tone_worker(WorkerArgs::tone_for_tests()).await;
    let second = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[first.address(), second.address()])).await;
    orch.wait_tts("both serving", |all| serving_count(all) == 2)
        .await;
    let mut client = orch.voxwire();
    speak_ok(&mut client, "regular", "One.").await;
    let all = orch.tts_pool().snapshot();
    let home = if dispatched(&all, &first.address()) == 1 {
        first.address()
    } else {
        second.address()
    };
    for _ in 0..5 {
        speak_ok(&mut client, "regular", "Again.").await;
        assert_eq!(first.active_sessions() + second.active_sessions(), 0.0);
    }
    assert_eq!(
        dispatched(&orch.tts_pool().snapshot(), &home),
        6,
        "every turn went to the session's worker"
    );
}

/// Regression (issue 22, High 3): explicit sessions (the relayed
/// StartSession) are bounded per client address.
#[tokio::test]
async fn open_sessions_are_limited_per_client() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(Args {
        max_open_sessions_per_client: 3,
        ..tts_args(&[worker.address()])
    })
    .await;
    orch.wait_ready().await;
    let mut tts =
        voxwire_proto::tts::tts_service_client::TtsServiceClient::new(orch.channel.clone());
    let start = |id: &str| voxwire_proto::tts::StartSessionRequest {
        session_id: id.into(),
        ..Default::default()
    };
    for id in ["s1", "s2", "s3"] {
        tts.start_session(start(id)).await.expect(id);
    }
    let refused = tts
        .start_session(start("s4"))
        .await
        .expect_err("over the limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-open-sessions-per-client"),
        "{refused:?}"
    );
    assert_eq!(worker.active_sessions(), 3.0);
    tts.end_session(voxwire_proto::tts::EndSessionRequest {
        session_id: "s1".into(),
    })
    .await
    .expect("end");
    tts.start_session(start("s4")).await.expect("room again");
}

/// Regression (issue 22, High 4): Transcribe streams that sent only their
/// config held the STT slots for minutes; the orchestrator closes a client
/// stream silent past --stream-idle-seconds and frees the worker stream.
#[tokio::test]
async fn an_idle_config_only_transcribe_stream_is_closed_within_the_bound() {
    let _gate = crate::GATE.enter(module_path!());
    let stt = fake_stt(FakeStt::default()).await;
    let orch = orchestrator(Args {
        stt: stt.address(),
        stream_idle_seconds: 1,
        ..Args::for_tests()
    })
    .await;
    orch.wait_ready().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(voxwire_proto::stt::RecognizeRequest {
        request: Some(voxwire_proto::stt::recognize_request::Request::Config(
            voxwire_proto::stt::RecognitionConfig {
                session_id: "idle-transcribe".into(),
                sample_rate: 16_000,
                ..Default::default()
            },
        )),
    })
    .await
    .expect("send");
    let mut events = orch
        .voxwire()
        .transcribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream opened")
        .into_inner();
    let stt_pool = std::sync::Arc::clone(orch.running.app.stt.pool());
    eventually("the worker stream open", || {
        stt_pool.snapshot().iter().any(|e| e.in_flight == 1)
    })
    .await;
    let ended = tokio::time::timeout(WAIT, tokio_stream::StreamExt::next(&mut events))
        .await
        .expect("closed within the bound");
    let status = ended.expect("an item").expect_err("an error, not an event");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("--stream-idle-seconds"),
        "{status:?}"
    );
    eventually("the worker stream released", || {
        stt_pool.snapshot().iter().all(|e| e.in_flight == 0)
    })
    .await;
    // The client never half-closed: the close came from the orchestrator.
    drop(tx);
}

async fn half_sent_request(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    stream
}

/// Regression (issue 22, Medium 5): the HTTP side port had no header-read
/// timeout: 3,000 half-sent requests stayed open (and at a 1,024-descriptor
/// limit stopped the gRPC side as well).
#[tokio::test]
async fn half_sent_http_requests_are_closed_after_the_header_read_timeout() {
    let _gate = crate::GATE.enter(module_path!());
    use tokio::io::AsyncReadExt;
    let orch = orchestrator(Args {
        http_header_read_timeout_ms: 300,
        ..Args::for_tests()
    })
    .await;
    let addr = orch.running.http_addr;
    let mut open = Vec::new();
    for _ in 0..10 {
        open.push(half_sent_request(addr).await);
    }
    // One that sends nothing at all.
    open.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    for mut stream in open {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "a half-sent request still open after {WAIT:?}"
        );
    }
    let (status, _) = orch.http_get("/healthz").await;
    assert_eq!(status, 200);
}

/// Regression (issue 22, Medium 5): the side port had no connection cap.
/// Past it, a connection waits until one closes.
#[tokio::test]
async fn the_http_side_port_caps_its_connections() {
    let _gate = crate::GATE.enter(module_path!());
    let orch = orchestrator(Args {
        http_max_connections: 2,
        http_header_read_timeout_ms: 60_000,
        ..Args::for_tests()
    })
    .await;
    let addr = orch.running.http_addr;
    let first = half_sent_request(addr).await;
    let _second = half_sent_request(addr).await;
    let mut third = tokio::spawn(async move { http_get(addr, "/healthz").await });
    // Pacing the fault only: the third must still be waiting.
    let early = tokio::time::timeout(std::time::Duration::from_millis(500), &mut third).await;
    assert!(early.is_err(), "served past the cap: {early:?}");
    drop(first);
    let (status, _) = tokio::time::timeout(WAIT, third)
        .await
        .expect("served once a connection closed")
        .expect("task");
    assert_eq!(status, 200);
}

/// A ConverseRequest on the wire whose `say` (field 2, a string) may carry
/// bytes that are not UTF-8: what a careless or hostile client sends.
#[derive(Clone, PartialEq, prost::Message)]
struct RawConverseRequest {
    #[prost(message, optional, tag = "1")]
    config: Option<voxwire_proto::voxwire::v1::ConverseConfig>,
    #[prost(bytes = "vec", tag = "2")]
    say: Vec<u8>,
}

/// Regression (issue 22, Medium 6): Converse ended with status OK and no
/// TurnError when a request did not decode.
#[tokio::test]
async fn a_converse_request_that_does_not_decode_gets_a_turn_error_and_invalid_argument() {
    let _gate = crate::GATE.enter(module_path!());
    use voxwire_proto::voxwire::v1::{converse_event, ConverseConfig, ConverseEvent};
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    let requests = vec![
        RawConverseRequest {
            config: Some(ConverseConfig {
                session_id: "garbage".into(),
                input_sample_rate: 16_000,
                ..Default::default()
            }),
            say: Vec::new(),
        },
        RawConverseRequest {
            config: None,
            say: vec![0xff, 0xfe, 0x80],
        },
    ];
    let mut grpc = tonic::client::Grpc::new(orch.channel.clone());
    grpc.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<RawConverseRequest, ConverseEvent>::default();
    let mut events = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(requests)),
            http::uri::PathAndQuery::from_static("/voxwire.v1.Voxwire/Converse"),
            codec,
        )
        .await
        .expect("the conversation opens")
        .into_inner();
    let mut turn_error = None;
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match events.message().await {
                Ok(Some(ConverseEvent {
                    event: Some(converse_event::Event::Error(error)),
                    ..
                })) => turn_error = Some(error),
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the conversation ends");
    let error = turn_error.expect("a TurnError before the end");
    assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");
    let status = ended.expect("an error status, not OK");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("does not decode"), "{status:?}");
}

/// A client with its own connection to the orchestrator (streams of one
/// connection share its window on the client's side too).
async fn own_connection(
    orch: &Orchestrator,
) -> voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", orch.running.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient::new(channel)
}

/// `stalled` clients each start a long Speak, read one frame and stop
/// reading; then an unrelated client speaks. Returns how long that took.
async fn speak_beside_stalled_readers(orch: &Orchestrator, stalled: usize) -> std::time::Duration {
    let long = "This sentence goes on for quite a while, and then some more. ".repeat(300);
    let mut held = Vec::new();
    for i in 0..stalled {
        let mut client = own_connection(orch).await;
        let mut frames = client
            .speak(voxwire_proto::voxwire::v1::SpeakRequest {
                session_id: format!("stalled-{i}"),
                text: long.clone(),
                ..Default::default()
            })
            .await
            .expect("speak")
            .into_inner();
        tokio::time::timeout(WAIT, tokio_stream::StreamExt::next(&mut frames))
            .await
            .unwrap_or_else(|_| panic!("stalled reader {i} got no first frame"))
            .expect("a frame")
            .expect("ok frame");
        // Held, never read again.
        held.push((client, frames));
    }
    let mut unrelated = own_connection(orch).await;
    let started = std::time::Instant::now();
    let spoken = tokio::time::timeout(WAIT, speak(&mut unrelated, "unrelated", "Hello there."))
        .await
        .expect("the unrelated Speak finishes");
    assert!(spoken.error.is_none(), "{:?}", spoken.error);
    let took = started.elapsed();
    // Still held, never read: the orchestrator ends those turns itself
    // (--client-lag-seconds), returning the worker's capacity.
    let pool = std::sync::Arc::clone(orch.tts_pool());
    eventually("the stalled turns ended by the lag bound", || {
        pool.snapshot().iter().all(|e| e.in_flight == 0)
    })
    .await;
    drop(held);
    took
}

/// Regression (issue 22, High 2): 5 Speak streams whose clients stopped
/// reading stalled an unrelated client's Speak for 30 s, and with 15-50 the
/// orchestrator blamed the healthy worker (UNRESPONSIVE) and everyone got
/// UNAVAILABLE: unread streams ate the shared HTTP/2 connection window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_and_fifty_stalled_readers_do_not_delay_an_unrelated_speak() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = tone_worker(WorkerArgs {
        max_sessions: 128,
        ..WorkerArgs::tone_for_tests()
    })
    .await;
    // The lag bound ends the stalled turns after 5 s; the unrelated Speak
    // must not wait for that.
    let orch = orchestrator(Args {
        client_lag_seconds: 5,
        ..tts_args(&[worker.address()])
    })
    .await;
    orch.wait_ready().await;
    let alone = speak_beside_stalled_readers(&orch, 0).await;
    for stalled in [5, 50] {
        let took = speak_beside_stalled_readers(&orch, stalled).await;
        println!("unrelated Speak: {alone:?} alone, {took:?} beside {stalled} stalled readers");
        assert!(
            took < std::time::Duration::from_secs(2) + alone * 4,
            "{took:?} beside {stalled} stalled readers ({alone:?} alone)"
        );
        let state = state_of(&orch.tts_pool().snapshot(), &worker.address());
        assert_eq!(
            state,
            Some(voxwire_orchestrator::endpoint::EndpointState::Serving)
        );
    }
}

/// Regression (issue 22, Low): a Converse config with input_sample_rate 0
/// was accepted, and the conversation failed only at its first audio.
#[tokio::test]
async fn a_converse_config_without_a_valid_sample_rate_is_refused_when_it_opens() {
    let _gate = crate::GATE.enter(module_path!());
    use voxwire_proto::voxwire::v1::{converse_request, ConverseConfig, ConverseRequest};
    let worker = tone_worker(WorkerArgs::tone_for_tests()).await;
    let orch = orchestrator(tts_args(&[worker.address()])).await;
    orch.wait_ready().await;
    for rate in [0, 4_000, 1_000_000] {
        let config = ConverseRequest {
            request: Some(converse_request::Request::Config(ConverseConfig {
                session_id: format!("rate-{rate}"),
                input_sample_rate: rate,
                ..Default::default()
            })),
        };
        let opened =
            tokio::time::timeout(WAIT, orch.voxwire().converse(tokio_stream::iter([config])))
                .await
                .expect("an answer");
        let status = opened.expect_err("refused at open");
        assert_eq!(status.code(), Code::InvalidArgument, "{rate}: {status:?}");
        assert!(status.message().contains("STT-CONFIG-RATE"), "{status:?}");
    }
}
