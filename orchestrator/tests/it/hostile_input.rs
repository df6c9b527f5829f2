//! Hostile input on every client-facing RPC of the orchestrator (Speak,
//! Transcribe, Converse): arbitrary session ids, oversized texts and
//! messages, bytes that are not UTF-8 in metadata, wrong sample rates, odd
//! byte counts, audio after the end, a second config, absurd sizes. No input
//! panics a task or hangs a call: each ends with a valid stream or a status
//! whose code and message the proto crate's rules predict. The expected
//! outcome always comes from voxwire-proto's validators, never a copy.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use voxwire_conformance::inputs;
use voxwire_orchestrator::config::Args;
use voxwire_orchestrator::server::{start, Running};
use voxwire_proto::session::validate_session_id;
use voxwire_proto::stt::{recognize_request, AudioChunk, RecognitionConfig, RecognizeRequest};
use voxwire_proto::stt_stream::{SttLimits, SttRequestValidator};
use voxwire_proto::tts_stream::{check_text_limit, TtsStreamValidator};
use voxwire_proto::voxwire::v1::voxwire_client::VoxwireClient;
use voxwire_proto::voxwire::v1::{
    converse_event, converse_request, ConverseConfig, ConverseRequest, EndOfAudio, SpeakRequest,
};
use voxwire_tts_worker::server::{self as tts_server, Args as WorkerArgs, RunningWorker};

/// Every call of these tests ends within this, or the test fails: a hostile
/// stream must not hang the server.
const CALL_BOUND: Duration = Duration::from_secs(20);
const MAX_TEXT_CHARS: usize = 300;
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

struct Stack {
    _worker: RunningWorker,
    orch: Running,
    _stops: Vec<oneshot::Sender<()>>,
    channel: Channel,
}

/// A tone TTS worker, and an orchestrator with small limits whose STT pool
/// points at a port nobody serves (so valid audio waits, briefly, for a
/// worker while invalid audio is refused by the orchestrator itself).
async fn stack(extra: impl FnOnce(Args) -> Args) -> Stack {
    let (worker_stop, worker_stopped) = oneshot::channel::<()>();
    let worker = tts_server::start(&WorkerArgs::tone_for_tests(), async {
        let _ = worker_stopped.await;
    })
    .await
    .expect("worker");
    let (stop, stopped) = oneshot::channel::<()>();
    let args = extra(Args {
        tts: worker.addr.to_string(),
        stt: "127.0.0.1:9".into(),
        ready_wait_ms: 1_000,
        max_text_chars: MAX_TEXT_CHARS,
        max_message_bytes: MAX_MESSAGE_BYTES,
        ..Args::for_tests()
    });
    let orch = start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("orchestrator");
    let channel = Channel::from_shared(format!("http://{}", orch.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    // The TTS side is ready once the tone worker is SERVING in the pool.
    tokio::time::timeout(CALL_BOUND, async {
        while !orch.app.tts.pool().any_serving() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("tone worker SERVING");
    Stack {
        _worker: worker,
        orch,
        _stops: vec![worker_stop, stop],
        channel,
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// A status every refusal must have: a code from the rules and words.
fn assert_named(status: &Status, codes: &[Code], what: &str) -> Result<(), TestCaseError> {
    prop_assert!(
        codes.contains(&status.code()),
        "{what}: {:?} {:?}",
        status.code(),
        status.message()
    );
    prop_assert!(!status.message().trim().is_empty(), "{what}: no message");
    Ok(())
}

/// Strings a client can put in a session id field: anything, including
/// control characters, very long ones, and ids the rule accepts.
fn any_session_id() -> BoxedStrategy<String> {
    prop_oneof![
        2 => inputs::invalid_session_id(),
        2 => "[a-z0-9-]{1,40}",
        1 => "\\PC{1,300}",
        1 => prop::collection::vec(any::<char>(), 0..20).prop_map(|c| c.into_iter().collect()),
    ]
    .boxed()
}

/// Header values that are not UTF-8 (obs-text bytes), or not a trace context.
fn hostile_metadata() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        prop::collection::vec(0x80u8..=0xff, 1..40),
        prop::collection::vec(0x20u8..0x7f, 0..80),
        Just(b"00-ffffffffffffffffffffffffffffffff-ffffffffffffffff-ff".to_vec()),
    ]
    .boxed()
}

#[test]
fn speak_answers_any_session_id_text_and_metadata_with_audio_or_a_named_status() {
    let _gate = crate::GATE.enter(module_path!());
    let rt = runtime();
    let stack = rt.block_on(stack(|a| a));
    let strategy = (
        any_session_id(),
        prop_oneof![
            3 => inputs::text(MAX_TEXT_CHARS),
            1 => (MAX_TEXT_CHARS + 1..MAX_TEXT_CHARS * 3).prop_map(|n| "a".repeat(n)),
        ],
        hostile_metadata(),
    );
    runner(24)
        .run(&strategy, |(session_id, text, metadata)| {
            rt.block_on(async {
                let mut request = Request::new(SpeakRequest {
                    session_id: session_id.clone(),
                    text: text.clone(),
                    ..Default::default()
                });
                if let Ok(value) = AsciiMetadataValue::try_from(metadata.as_slice()) {
                    request.metadata_mut().insert("traceparent", value.clone());
                    request.metadata_mut().insert("x-voxwire-session", value);
                }
                // The orchestrator checks the text first, then the id (an
                // empty id asks for a new session).
                let expected = check_text_limit(text.chars().count(), MAX_TEXT_CHARS)
                    .err()
                    .or_else(|| {
                        validate_session_id(&session_id)
                            .err()
                            .filter(|_| !session_id.is_empty())
                    });
                let outcome = tokio::time::timeout(CALL_BOUND, async {
                    let mut frames = VoxwireClient::new(stack.channel.clone())
                        .speak(request)
                        .await?
                        .into_inner();
                    let mut validator: Option<TtsStreamValidator> = None;
                    while let Some(frame) = frames.next().await {
                        let frame = frame?;
                        let validator = validator.get_or_insert_with(|| {
                            TtsStreamValidator::new(frame.session_id.clone())
                        });
                        validator
                            .observe(&frame)
                            .map_err(|v| Status::data_loss(format!("invalid frame: {v}")))?;
                    }
                    Ok::<_, Status>(validator.map(|v| v.finish().is_ok()))
                })
                .await;
                let outcome = outcome.map_err(|_| TestCaseError::fail("Speak hung"))?;
                match (expected, outcome) {
                    (None, Ok(finished)) => {
                        prop_assert_eq!(finished, Some(true), "a valid Speak ends with its final")
                    }
                    (None, Err(status)) => {
                        prop_assert!(false, "valid Speak failed: {status:?}")
                    }
                    (Some(violation), Err(status)) => {
                        prop_assert_eq!(status.code(), violation.rule.code());
                        prop_assert!(
                            status.message().contains(violation.rule.id()),
                            "{:?} names {}",
                            status.message(),
                            violation.rule.id()
                        );
                    }
                    (Some(violation), Ok(_)) => {
                        prop_assert!(false, "{} was let through", violation.rule.id())
                    }
                }
                Ok(())
            })
        })
        .expect("Speak property");
}

#[test]
fn a_message_past_the_size_limit_is_refused_out_of_range() {
    let _gate = crate::GATE.enter(module_path!());
    let rt = runtime();
    let stack = rt.block_on(stack(|a| a));
    rt.block_on(async {
        let status = VoxwireClient::new(stack.channel.clone())
            .speak(SpeakRequest {
                session_id: "huge".into(),
                text: "a".repeat(MAX_MESSAGE_BYTES + 1),
                ..Default::default()
            })
            .await
            .expect_err("oversized message");
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(status.message().contains("too large"), "{status:?}");
    });
}

/// Sends `requests` as one Transcribe stream and reads every event: the
/// call's outcome, or `None` if it outlived [`CALL_BOUND`].
async fn transcribe_all(
    channel: Channel,
    requests: Vec<RecognizeRequest>,
) -> Option<Result<(), Status>> {
    tokio::time::timeout(CALL_BOUND, async {
        let mut events = VoxwireClient::new(channel)
            .transcribe(tokio_stream::iter(requests))
            .await?
            .into_inner();
        while let Some(event) = events.next().await {
            event?;
        }
        Ok::<(), Status>(())
    })
    .await
    .ok()
}

/// The orchestrator's own audio limits (--max-chunk-bytes,
/// --max-stream-seconds) are the ones it enforces, not the protocol defaults:
/// it used to validate client audio against `SttLimits::default()` whatever
/// the operator configured.
#[test]
fn transcribe_enforces_the_configured_audio_limits() {
    let _gate = crate::GATE.enter(module_path!());
    let rt = runtime();
    let stack = rt.block_on(stack(|a| Args {
        max_chunk_bytes: 3_200,
        max_stream_seconds: 1,
        ..a
    }));
    let transcribe = |chunks: Vec<usize>| {
        let channel = stack.channel.clone();
        let steps: Vec<Step> = std::iter::once(Step::Config {
            session: "limits".into(),
            rate: 16_000,
        })
        .chain(chunks.into_iter().map(|bytes| Step::Audio {
            bytes,
            is_final: false,
        }))
        .collect();
        async move {
            transcribe_all(channel, requests(&steps))
                .await
                .expect("Transcribe ends")
                .expect_err("refused")
        }
    };
    rt.block_on(async {
        // 3,202 bytes: one sample more than a chunk may carry.
        let status = transcribe(vec![3_202]).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("STT-CHUNK-LIMIT"), "{status:?}");
        // Eleven 0.1 s chunks at 16 kHz: 1.1 s, past the one-second limit.
        let status = transcribe(vec![3_200; 11]).await;
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(
            status.message().contains("STT-DURATION-LIMIT"),
            "{status:?}"
        );
    });
}

/// One Transcribe request stream, as hostile clients write them.
#[derive(Debug, Clone)]
enum Step {
    Config { session: String, rate: i32 },
    Audio { bytes: usize, is_final: bool },
}

fn step() -> BoxedStrategy<Step> {
    prop_oneof![
        1 => (any_session_id(), prop_oneof![
            Just(16_000),
            Just(8_000),
            inputs::bad_sample_rate(),
        ])
            .prop_map(|(session, rate)| Step::Config { session, rate }),
        4 => (
            prop_oneof![0usize..700, Just(96_001usize), Just(200_001usize)],
            prop::bool::weighted(0.2),
        )
            .prop_map(|(bytes, is_final)| Step::Audio { bytes, is_final }),
    ]
    .boxed()
}

fn requests(steps: &[Step]) -> Vec<RecognizeRequest> {
    steps
        .iter()
        .map(|step| RecognizeRequest {
            request: Some(match step {
                Step::Config { session, rate } => {
                    recognize_request::Request::Config(RecognitionConfig {
                        session_id: session.clone(),
                        sample_rate: *rate,
                        ..Default::default()
                    })
                }
                Step::Audio { bytes, is_final } => recognize_request::Request::Audio(AudioChunk {
                    // A quiet ramp: valid PCM whatever the length.
                    audio_data: (0..*bytes).map(|i| (i % 7) as u8).collect(),
                    is_final: *is_final,
                }),
            }),
        })
        .collect()
}

#[test]
fn transcribe_refuses_every_invalid_request_stream_with_the_rule_it_breaks() {
    let _gate = crate::GATE.enter(module_path!());
    let rt = runtime();
    // Messages up to 1 MiB here, so oversized audio chunks meet STT-CHUNK-LIMIT
    // rather than the transport's message limit.
    let stack = rt.block_on(stack(|a| Args {
        max_message_bytes: 1 << 20,
        ..a
    }));
    let strategy = prop::collection::vec(step(), 0..6);
    runner(32)
        .run(&strategy, |steps| {
            let requests = requests(&steps);
            // What the rules say of this stream, from the proto validator itself.
            let mut validator = SttRequestValidator::new(SttLimits::default());
            let mut expected = requests.iter().find_map(|r| validator.accept(r).err());
            if expected.is_none() {
                expected = validator.half_closed().err();
            }
            rt.block_on(async {
                let outcome = transcribe_all(stack.channel.clone(), requests)
                    .await
                    .ok_or_else(|| TestCaseError::fail("Transcribe hung"))?;
                match (&expected, outcome) {
                    (Some(violation), Err(status)) => {
                        prop_assert_eq!(
                            status.code(),
                            violation.rule.code(),
                            "{:?}: {:?}",
                            violation.rule.id(),
                            status.message()
                        );
                        prop_assert!(
                            status.message().contains(violation.rule.id()),
                            "{:?} names {}",
                            status.message(),
                            violation.rule.id()
                        );
                    }
                    (Some(violation), Ok(())) => {
                        prop_assert!(false, "{} was let through", violation.rule.id())
                    }
                    // A valid stream reaches dispatch: no STT worker serves here.
                    (None, Err(status)) => assert_named(
                        &status,
                        &[Code::Unavailable, Code::ResourceExhausted],
                        "valid stream",
                    )?,
                    (None, Ok(())) => prop_assert!(false, "no STT worker, yet OK"),
                }
                Ok(())
            })
        })
        .expect("Transcribe property");
}

#[derive(Debug, Clone)]
enum Turn {
    Say(String),
    Audio(usize),
    Interrupt,
    End,
    Config,
}

#[test]
fn converse_survives_any_request_stream_and_answers_with_named_statuses() {
    let _gate = crate::GATE.enter(module_path!());
    let rt = runtime();
    let stack = rt.block_on(stack(|a| a));
    let config = (any_session_id(), inputs_rate());
    let turn = prop_oneof![
        3 => inputs::text(MAX_TEXT_CHARS * 2).prop_map(Turn::Say),
        2 => (0usize..2_000).prop_map(Turn::Audio),
        1 => Just(Turn::Interrupt),
        1 => Just(Turn::End),
        1 => Just(Turn::Config),
    ];
    let strategy = (config, prop::collection::vec(turn, 0..6));
    runner(16)
        .run(&strategy, |((session, rate), turns)| {
            rt.block_on(async {
                let mut requests = vec![ConverseRequest {
                    request: Some(converse_request::Request::Config(ConverseConfig {
                        session_id: session.clone(),
                        input_sample_rate: rate,
                        ..Default::default()
                    })),
                }];
                for turn in &turns {
                    let request = match turn {
                        Turn::Say(text) => converse_request::Request::Say(text.clone()),
                        Turn::Audio(bytes) => {
                            converse_request::Request::Audio(vec![1u8; *bytes].into())
                        }
                        Turn::Interrupt => converse_request::Request::Interrupt(Default::default()),
                        Turn::End => converse_request::Request::EndOfAudio(EndOfAudio {}),
                        Turn::Config => {
                            converse_request::Request::Config(ConverseConfig::default())
                        }
                    };
                    requests.push(ConverseRequest {
                        request: Some(request),
                    });
                }
                let outcome = tokio::time::timeout(CALL_BOUND, async {
                    let mut events = VoxwireClient::new(stack.channel.clone())
                        .converse(tokio_stream::iter(requests))
                        .await?
                        .into_inner();
                    let mut turn_errors = Vec::new();
                    while let Some(event) = events.next().await {
                        if let Some(converse_event::Event::Error(error)) = event?.event {
                            turn_errors.push(error);
                        }
                    }
                    Ok::<_, Status>(turn_errors)
                })
                .await
                .map_err(|_| TestCaseError::fail("Converse hung"))?;
                let bad_id = !session.is_empty() && validate_session_id(&session).is_err();
                match outcome {
                    Ok(turn_errors) => {
                        prop_assert!(!bad_id, "invalid session id {session:?} let in");
                        for error in turn_errors {
                            prop_assert!(
                                !error.message.trim().is_empty(),
                                "turn error without words"
                            );
                            prop_assert!(error.code != 0, "turn error with code OK");
                        }
                    }
                    Err(status) => assert_named(
                        &status,
                        &[
                            Code::InvalidArgument,
                            Code::OutOfRange,
                            Code::ResourceExhausted,
                            Code::Unavailable,
                            Code::AlreadyExists,
                            Code::FailedPrecondition,
                        ],
                        "Converse",
                    )?,
                }
                Ok(())
            })
        })
        .expect("Converse property");
    // Nothing is left behind by the hostile conversations.
    rt.block_on(async {
        tokio::time::timeout(CALL_BOUND, async {
            while stack.orch.app.drain.in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("every Converse released its admission");
    });
}

fn inputs_rate() -> BoxedStrategy<i32> {
    prop_oneof![3 => Just(16_000), 1 => inputs::bad_sample_rate()].boxed()
}

#[test]
fn calls_per_client_are_bounded_and_released() {
    let _gate = crate::GATE.enter(module_path!());
    let rt = runtime();
    let stack = rt.block_on(stack(|a| Args {
        max_sessions_per_client: 2,
        ..a
    }));
    rt.block_on(async {
        let open = |id: &'static str| {
            let channel = stack.channel.clone();
            async move {
                let (tx, rx) = tokio::sync::mpsc::channel(4);
                tx.send(ConverseRequest {
                    request: Some(converse_request::Request::Config(ConverseConfig {
                        session_id: id.into(),
                        input_sample_rate: 16_000,
                        ..Default::default()
                    })),
                })
                .await
                .expect("queue config");
                let result = VoxwireClient::new(channel)
                    .converse(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await;
                (tx, result)
            }
        };
        let (first_tx, first) = open("limit-1").await;
        let first = first.expect("first conversation");
        let (_second_tx, second) = open("limit-2").await;
        let _second = second.expect("second conversation");
        let (_third_tx, third) = open("limit-3").await;
        let status = third.expect_err("third conversation from the same client");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("--max-sessions-per-client"),
            "{status:?}"
        );
        // Ending one conversation makes room for another.
        drop(first_tx);
        let mut events = first.into_inner();
        tokio::time::timeout(CALL_BOUND, async { while events.next().await.is_some() {} })
            .await
            .expect("first conversation ends");
        drop(events);
        let room = tokio::time::timeout(CALL_BOUND, async {
            loop {
                let (_tx, again) = open("limit-4").await;
                if let Ok(again) = again {
                    return again;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("room again after a conversation ended");
        drop(room);
    });
}
