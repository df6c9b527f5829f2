//! Hostile input on the TTS worker's RPCs: StartSession with any session
//! id, Synthesize with any chunking of any text (past the limit too),
//! absurd sequence numbers, chunks naming another session, no final flag,
//! and messages past the size limit. Nothing panics or hangs; each call
//! ends with a stream the proto validator accepts or with the status of the
//! rule the input breaks, as the proto crate computes it.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio::runtime::Runtime;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};
use voxwire_conformance::inputs;
use voxwire_proto::session::validate_session_id;
use voxwire_proto::tts::tts_service_client::TtsServiceClient;
use voxwire_proto::tts::{EndSessionRequest, StartSessionRequest, TextChunk};
use voxwire_proto::tts_stream::{check_chunk_session, check_text_limit, TtsStreamValidator};
use voxwire_proto::Violation;
use voxwire_tts_worker::server::{start, Args, RunningWorker};

const CALL_BOUND: Duration = Duration::from_secs(20);
const MAX_TEXT_CHARS: usize = 200;
const MAX_MESSAGE_BYTES: usize = 32 * 1024;

struct Worker {
    _running: RunningWorker,
    _stop: tokio::sync::oneshot::Sender<()>,
    channel: Channel,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn worker() -> Worker {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let args = Args {
        max_text_chars: MAX_TEXT_CHARS,
        max_message_bytes: MAX_MESSAGE_BYTES,
        ..Args::tone_for_tests()
    };
    let running = start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("worker");
    tokio::time::timeout(CALL_BOUND, async {
        while !running.worker.is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("warm");
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    Worker {
        _running: running,
        _stop: stop,
        channel,
    }
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

fn any_session_id() -> BoxedStrategy<String> {
    prop_oneof![
        2 => inputs::invalid_session_id(),
        2 => "[a-z0-9-]{1,40}",
        1 => "\\PC{1,300}",
        1 => prop::collection::vec(any::<char>(), 1..20).prop_map(|c| c.into_iter().collect()),
    ]
    .boxed()
}

fn expect_rule(status: &Status, violation: &Violation) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        status.code(),
        violation.rule.code(),
        "{:?}",
        status.message()
    );
    prop_assert!(
        status.message().contains(violation.rule.id()),
        "{:?} names {}",
        status.message(),
        violation.rule.id()
    );
    Ok(())
}

#[test]
fn start_session_takes_any_id_to_ok_or_session_id_invalid() {
    let _gate = crate::GATE.enter(module_path!());
    let rt = runtime();
    let worker = rt.block_on(worker());
    runner(48)
        .run(&any_session_id(), |id| {
            rt.block_on(async {
                let mut client = TtsServiceClient::new(worker.channel.clone());
                let result = tokio::time::timeout(
                    CALL_BOUND,
                    client.start_session(StartSessionRequest {
                        session_id: id.clone(),
                        ..Default::default()
                    }),
                )
                .await
                .map_err(|_| TestCaseError::fail("StartSession hung"))?;
                match (validate_session_id(&id), result) {
                    (Ok(()), Ok(_)) => {
                        client
                            .end_session(EndSessionRequest { session_id: id })
                            .await
                            .map_err(|s| TestCaseError::fail(format!("EndSession: {s:?}")))?;
                    }
                    (Ok(()), Err(status)) => prop_assert!(false, "valid id refused: {status:?}"),
                    (Err(violation), Err(status)) => expect_rule(&status, &violation)?,
                    (Err(violation), Ok(_)) => prop_assert!(false, "{violation} let through"),
                }
                Ok(())
            })
        })
        .expect("StartSession property");
}

/// One Synthesize call as a hostile client writes it.
#[derive(Debug, Clone)]
struct Call {
    texts: Vec<String>,
    sequence_numbers: Vec<i64>,
    /// Index of a chunk that names another session, if any.
    foreign: Option<usize>,
    final_flag: bool,
}

fn call() -> BoxedStrategy<Call> {
    (1usize..5)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(
                    prop_oneof![
                        4 => inputs::text(MAX_TEXT_CHARS / 2),
                        1 => (MAX_TEXT_CHARS..MAX_TEXT_CHARS * 2).prop_map(|n| "b".repeat(n)),
                    ],
                    n,
                ),
                prop::collection::vec(
                    prop_oneof![
                        Just(0i64),
                        Just(-1),
                        Just(i64::MIN),
                        Just(i64::MAX),
                        any::<i64>()
                    ],
                    n,
                ),
                prop::option::weighted(0.2, 0..n),
                any::<bool>(),
            )
        })
        .prop_map(|(texts, sequence_numbers, foreign, final_flag)| Call {
            texts,
            sequence_numbers,
            foreign,
            final_flag,
        })
        .boxed()
}

#[test]
fn synthesize_ends_every_hostile_call_with_valid_frames_or_the_broken_rule() {
    let _gate = crate::GATE.enter(module_path!());
    let rt = runtime();
    let worker = rt.block_on(worker());
    runner(32)
        .run(&call(), |call| {
            rt.block_on(async {
                let session = format!("hostile-{}", rand_suffix());
                let mut client = TtsServiceClient::new(worker.channel.clone());
                client
                    .start_session(StartSessionRequest {
                        session_id: session.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|s| TestCaseError::fail(format!("StartSession: {s:?}")))?;
                let last = call.texts.len() - 1;
                let chunks: Vec<TextChunk> = call
                    .texts
                    .iter()
                    .enumerate()
                    .map(|(i, text)| TextChunk {
                        session_id: if call.foreign == Some(i) && i > 0 {
                            "someone-else".into()
                        } else {
                            session.clone()
                        },
                        text: text.clone(),
                        is_final: call.final_flag && i == last,
                        sequence_number: call.sequence_numbers[i],
                    })
                    .collect();
                // What the rules say, chunk by chunk, as the proto crate checks it.
                let mut chars = 0usize;
                let expected = chunks.iter().find_map(|chunk| {
                    check_chunk_session(Some(&session), chunk)
                        .and_then(|()| {
                            chars += chunk.text.chars().count();
                            check_text_limit(chars, MAX_TEXT_CHARS)
                        })
                        .err()
                });
                let outcome = tokio::time::timeout(CALL_BOUND, async {
                    let mut frames = client
                        .synthesize(tokio_stream::iter(chunks))
                        .await?
                        .into_inner();
                    let mut validator = TtsStreamValidator::new(session.clone());
                    while let Some(frame) = frames.next().await {
                        validator
                            .observe(&frame?)
                            .map_err(|v| Status::data_loss(format!("invalid frame: {v}")))?;
                    }
                    validator
                        .finish()
                        .map_err(|v| Status::data_loss(format!("unfinished stream: {v}")))
                })
                .await
                .map_err(|_| TestCaseError::fail("Synthesize hung"))?;
                match (&expected, outcome) {
                    (None, Ok(())) => {}
                    (None, Err(status)) => prop_assert!(false, "valid call failed: {status:?}"),
                    (Some(violation), Err(status)) => expect_rule(&status, violation)?,
                    (Some(violation), Ok(())) => {
                        prop_assert!(false, "{violation} let through")
                    }
                }
                let _ = client
                    .end_session(EndSessionRequest {
                        session_id: session,
                    })
                    .await;
                Ok(())
            })
        })
        .expect("Synthesize property");
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[test]
fn a_message_past_the_size_limit_is_refused_out_of_range() {
    let _gate = crate::GATE.enter(module_path!());
    let rt = runtime();
    let worker = rt.block_on(worker());
    rt.block_on(async {
        let status = TtsServiceClient::new(worker.channel.clone())
            .start_session(StartSessionRequest {
                session_id: "x".repeat(MAX_MESSAGE_BYTES + 1),
                ..Default::default()
            })
            .await
            .expect_err("oversized message");
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        assert!(status.message().contains("too large"), "{status:?}");
    });
}
