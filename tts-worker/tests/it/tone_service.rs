//! The TTS worker over gRPC with the tone engine: health gating, session
//! status codes, streaming, control, cancellation and drain. The same
//! behaviour with the real voice is covered in piper_service.rs.

use std::time::{Duration, Instant};

use crate::common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::*;
use voxwire_proto::tts_stream::{FrameKind, TtsStreamValidator};
use voxwire_tts_worker::server::Args;

#[tokio::test]
async fn session_errors_have_their_status_codes() {
    let _gate = crate::GATE.enter(module_path!());
    let fixture = start_worker(Args {
        max_sessions: 2,
        ..Args::tone_for_tests()
    })
    .await;
    let mut tts = fixture.tts();
    let start = |id: &str, model: &str| StartSessionRequest {
        session_id: id.into(),
        model_id: model.into(),
        ..Default::default()
    };
    assert_eq!(
        code(tts.start_session(start("", "")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(tts.start_session(start("a", "no-such-voice")).await),
        Code::NotFound
    );
    tts.start_session(start("a", "")).await.expect("first");
    assert_eq!(
        code(tts.start_session(start("a", "")).await),
        Code::AlreadyExists
    );
    tts.start_session(start("b", "tone")).await.expect("second");
    assert_eq!(
        code(tts.start_session(start("c", "")).await),
        Code::ResourceExhausted
    );
    let unknown = tts
        .synthesize(tokio_stream::iter(vec![chunk("zzz", "hi", true, 1)]))
        .await;
    assert_eq!(code(unknown), Code::NotFound);
    let control = tts
        .control(ControlRequest {
            session_id: "zzz".into(),
            command: ControlCommand::Stop as i32,
        })
        .await;
    assert_eq!(code(control), Code::NotFound);
    // EndSession is idempotent, and frees the place.
    for _ in 0..2 {
        let ended = tts
            .end_session(EndSessionRequest {
                session_id: "a".into(),
            })
            .await
            .expect("end");
        assert!(ended.into_inner().success);
    }
    tts.start_session(start("c", "")).await.expect("room again");
}

#[tokio::test]
async fn one_session_carries_many_calls_and_both_empty_cases_end_with_one_final() {
    let _gate = crate::GATE.enter(module_path!());
    let fixture = start_worker(Args::tone_for_tests()).await;
    let mut tts = fixture.tts();
    fixture.start_session("s").await;
    for i in 0..100 {
        let frames = synthesize(
            &mut tts,
            "s",
            vec![chunk("s", &format!("Message {i}."), true, 1)],
        )
        .await;
        assert!(frames.len() > 5, "call {i} had audio");
        assert_eq!(frames.iter().filter(|(f, _)| f.is_final).count(), 1);
    }
    for text in ["", "   ", "?!"] {
        let frames = synthesize(&mut tts, "s", vec![chunk("s", text, true, 1)]).await;
        assert_eq!(frames.len(), 1, "{text:?}");
        assert_eq!(frames[0].1, FrameKind::EndMarker);
    }
    // Zero chunks: the lone end marker.
    let frames = synthesize(&mut tts, "", Vec::new()).await;
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].1, FrameKind::EndMarker);
}

#[tokio::test]
async fn first_frame_arrives_before_the_input_ends() {
    let _gate = crate::GATE.enter(module_path!());
    let fixture = start_worker(Args::tone_for_tests()).await;
    let mut tts = fixture.tts();
    fixture.start_session("s").await;
    let (tx, rx) = mpsc::channel(4);
    tx.send(chunk("s", "The first sentence is complete.", false, 1))
        .await
        .expect("send");
    let mut frames = tts
        .synthesize(ReceiverStream::new(rx))
        .await
        .expect("synthesize")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), frames.next())
        .await
        .expect("a frame before the rest of the text")
        .expect("stream open")
        .expect("frame");
    assert_eq!(first.sequence_number, 1);
    assert!(!first.is_final);
    tx.send(chunk("s", " And the second.", true, 2))
        .await
        .expect("send");
    let mut validator = TtsStreamValidator::new("s");
    validator.observe(&first).expect("valid");
    while let Some(frame) = frames.next().await {
        validator.observe(&frame.expect("frame")).expect("valid");
    }
    validator.finish().expect("final");
}

#[tokio::test]
async fn stop_ends_only_its_own_session_and_the_session_stays_usable() {
    let _gate = crate::GATE.enter(module_path!());
    let fixture = start_worker(Args {
        realtime: true,
        ..Args::tone_for_tests()
    })
    .await;
    fixture.start_session("a").await;
    fixture.start_session("b").await;
    let long = "A long text for real time pacing. ".repeat(10);
    let mut tts_a = fixture.tts();
    let mut tts_b = fixture.tts();
    let a_text = long.clone();
    let a = tokio::spawn(async move {
        synthesize(&mut tts_a, "a", vec![chunk("a", &a_text, true, 1)]).await
    });
    let b =
        tokio::spawn(
            async move { synthesize(&mut tts_b, "b", vec![chunk("b", &long, true, 1)]).await },
        );
    // STOP must reach a call that is running: wait (bounded) until both
    // calls are in flight, as the worker reports them.
    let mut probe = fixture.tts();
    let started = Instant::now();
    while metric(&mut probe, "active_streams").await < 2.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "calls did not start"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fixture
        .tts()
        .control(ControlRequest {
            session_id: "a".into(),
            command: ControlCommand::Stop as i32,
        })
        .await
        .expect("stop");
    let a_frames = a.await.expect("a");
    // Real-time pacing: 10 sentences are tens of seconds of audio; a stopped
    // call ends long before that, with its final frame (checked in synthesize).
    assert!(
        a_frames.len() < 200,
        "a stopped early: {} frames",
        a_frames.len()
    );
    // b was not stopped: it still streams. Cancel it by dropping the task.
    b.abort();
    let mut tts = fixture.tts();
    let again = synthesize(&mut tts, "a", vec![chunk("a", "Still here.", true, 1)]).await;
    assert!(again.len() > 1);
}

#[tokio::test]
async fn cancelling_a_call_returns_its_capacity() {
    let _gate = crate::GATE.enter(module_path!());
    let fixture = start_worker(Args {
        realtime: true,
        ..Args::tone_for_tests()
    })
    .await;
    let mut tts = fixture.tts();
    fixture.start_session("s").await;
    assert_eq!(metric(&mut tts, "active_streams").await, 0.0);
    let mut frames = tts
        .synthesize(tokio_stream::iter(vec![chunk(
            "s",
            &"Long text. ".repeat(50),
            true,
            1,
        )]))
        .await
        .expect("synthesize")
        .into_inner();
    frames.next().await.expect("a frame").expect("ok");
    assert_eq!(metric(&mut tts, "active_streams").await, 1.0);
    let cancelled_at = Instant::now();
    drop(frames);
    // The worker notices within a frame or two; poll the metric with a bound.
    loop {
        if metric(&mut tts, "active_streams").await == 0.0 {
            break;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(5),
            "capacity not returned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = synthesize(&mut tts, "s", vec![chunk("s", "Next.", true, 1)]).await;
    assert!(again.len() > 1);
}

#[tokio::test]
async fn chunk_naming_another_session_and_overlong_text_are_invalid() {
    let _gate = crate::GATE.enter(module_path!());
    let fixture = start_worker(Args {
        max_text_chars: 50,
        ..Args::tone_for_tests()
    })
    .await;
    let mut tts = fixture.tts();
    fixture.start_session("s").await;
    let status_of = |mut frames: tonic::Streaming<AudioFrame>| async move {
        loop {
            match frames.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return status,
                None => panic!("stream ended without the error"),
            }
        }
    };
    let frames = tts
        .synthesize(tokio_stream::iter(vec![
            chunk("s", "Hello.", false, 1),
            chunk("other", "Hi.", true, 2),
        ]))
        .await
        .expect("call")
        .into_inner();
    let status = status_of(frames).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("TTS-CHUNK-SESSION"));
    let frames = tts
        .synthesize(tokio_stream::iter(vec![chunk(
            "s",
            &"x".repeat(51),
            true,
            1,
        )]))
        .await
        .expect("call")
        .into_inner();
    assert!(status_of(frames).await.message().contains("TTS-TEXT-LIMIT"));
}

#[tokio::test]
async fn health_goes_not_serving_on_drain_and_new_sessions_are_refused() {
    let _gate = crate::GATE.enter(module_path!());
    let fixture = start_worker(Args {
        realtime: true,
        ..Args::tone_for_tests()
    })
    .await;
    let mut health = HealthClient::new(fixture.channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest { service: "".into() })
        .await
        .expect("watch")
        .into_inner();
    let first = watch.next().await.expect("update").expect("ok");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // A call in flight (about 1.5 s of paced audio) holds the drain open.
    fixture.start_session("busy").await;
    let mut tts = fixture.tts();
    let in_flight = tokio::spawn(async move {
        synthesize(
            &mut tts,
            "busy",
            vec![chunk(
                "busy",
                "Forty characters or so of paced text.",
                true,
                1,
            )],
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let Fixture {
        running,
        stop,
        channel,
    } = fixture;
    stop.send(()).expect("stop");
    let next = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("an update")
        .expect("stream")
        .expect("ok");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let refused = TtsServiceClient::new(channel)
        .start_session(StartSessionRequest {
            session_id: "late".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(refused), Code::Unavailable);
    // The call in flight finishes whole, with its final frame.
    let frames = in_flight.await.expect("in-flight call");
    assert!(frames.last().is_some_and(|(f, _)| f.is_final));
    tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("exits within the drain bound")
        .expect("clean exit");
}

/// A minimal HTTP/1.0 GET of `path`: the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

/// Regression (issue 22, Low): the worker's /metrics had only its load
/// gauges, with no `# HELP`, and no request counts or latencies.
#[tokio::test]
async fn metrics_count_and_time_each_call_by_method_and_code() {
    let _gate = crate::GATE.enter(module_path!());
    let fixture = start_worker(Args {
        metrics_listen: Some("127.0.0.1:0".into()),
        ..Args::tone_for_tests()
    })
    .await;
    let metrics = fixture.running.metrics_addr.expect("metrics served");
    let mut tts = fixture.tts();
    let unknown = tts
        .start_session(StartSessionRequest {
            session_id: "m".into(),
            model_id: "no-such-voice".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(unknown), Code::NotFound);
    fixture.start_session("m").await;
    let body = http_get(metrics, "/metrics").await;
    for line in [
        "# HELP voxwire_tts_active_sessions ",
        "# HELP voxwire_grpc_server_handled_total ",
        "voxwire_grpc_server_handled_total{service=\"tts.TTSService\",method=\"StartSession\",code=\"not_found\"} 1",
        "voxwire_grpc_server_handled_total{service=\"tts.TTSService\",method=\"StartSession\",code=\"ok\"} 1",
        "voxwire_grpc_server_handling_seconds_count{service=\"tts.TTSService\",method=\"StartSession\"} 2",
    ] {
        assert!(body.contains(line), "{line} missing:\n{body}");
    }
}
