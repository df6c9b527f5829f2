//! Every start order of orchestrator, TTS worker and STT worker, with gaps
//! between starts (VOXWIRE_RELIABILITY_GAP_MS, default 2 s): once all three
//! run, a TTS turn and an STT transcription complete through the
//! orchestrator, with no restart and no sleep in the product.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use tonic::Code;
use voxctl::transcribe::{Route, SendOptions};
use voxwire_reliability::client;
use voxwire_reliability::process::free_port;
use voxwire_reliability::stack::{Orchestrator, OrchestratorConfig, Worker, SLACK, START};
use voxwire_reliability::{start_gap, Error};

/// One order at a time: each starts a Whisper model, and two cores are shared.
static SERIAL: Mutex<()> = Mutex::const_new(());

#[derive(Debug, Clone, Copy, PartialEq)]
enum Piece {
    Orchestrator,
    Tts,
    Stt,
}

const SENTENCE: &str = "the quick brown fox jumps over the lazy dog";

async fn run(order: [Piece; 3]) {
    let Some(model) = voxwire_testkit::model_dir(voxwire_testkit::WHISPER_TINY_EN) else {
        return;
    };
    let Some((samples, rate)) = voxwire_testkit::speech::espeak(SENTENCE) else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let gap = start_gap();
    let tts_port = free_port().expect("port");
    let stt_port = free_port().expect("port");
    let tts_addr = format!("127.0.0.1:{tts_port}");
    let stt_addr = format!("127.0.0.1:{stt_port}");
    let config = OrchestratorConfig::new(
        std::slice::from_ref(&tts_addr),
        std::slice::from_ref(&stt_addr),
    )
    .flag("--ready-wait-ms", 1_000);
    let mut orchestrator: Option<Orchestrator> = None;
    let mut tts: Option<Worker> = None;
    let mut stt: Option<Worker> = None;
    for (i, piece) in order.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        match piece {
            Piece::Orchestrator => {
                let o = Orchestrator::start(config.clone())
                    .await
                    .expect("orchestrator");
                if tts.is_none() {
                    // No TTS worker yet: a turn is refused in bound, not hung.
                    let started = Instant::now();
                    let result = client::speak(
                        o.channel().await.expect("connect"),
                        &client::session_id("early"),
                        "Hi.",
                    )
                    .await;
                    match result {
                        Err(Error::Status(status)) => {
                            assert_eq!(status.code(), Code::Unavailable, "{status:?}")
                        }
                        other => panic!("expected UNAVAILABLE, got {other:?}"),
                    }
                    assert!(started.elapsed() < Duration::from_secs(1) + SLACK);
                }
                orchestrator = Some(o);
            }
            Piece::Tts => tts = Some(Worker::tone(Some(tts_port), 16, false).expect("tts-worker")),
            Piece::Stt => stt = Some(Worker::stt(Some(stt_port), &model).expect("stt-worker")),
        }
    }
    let (Some(orchestrator), Some(tts), Some(_stt)) = (orchestrator, tts, stt) else {
        panic!("all three started");
    };
    let last_started = Instant::now();
    orchestrator
        .wait_state(&tts_addr, "SERVING", START)
        .await
        .expect("TTS SERVING");
    orchestrator
        .wait_state(&stt_addr, "SERVING", START)
        .await
        .expect("STT SERVING");
    eprintln!(
        "{order:?}: both workers SERVING {:?} after the last start",
        last_started.elapsed()
    );
    let reference = client::reference(&tts.addr, "Hello there.")
        .await
        .expect("reference");
    let turn = client::speak(
        orchestrator.channel().await.expect("connect"),
        &client::session_id("order"),
        "Hello there.",
    )
    .await
    .expect("TTS turn through the orchestrator");
    assert_eq!(turn.audio, reference);
    let events = voxctl::transcribe::transcribe(
        &orchestrator.grpc,
        Route::Orchestrator,
        &samples,
        rate,
        SendOptions {
            partials: false,
            realtime: false,
        },
        |_| {},
    )
    .await
    .expect("STT stream through the orchestrator");
    let text: Vec<String> = events
        .iter()
        .filter(|e| e.is_final)
        .map(|e| e.text.clone())
        .collect();
    let text = text.join(" ");
    let wer = voxwire_testkit::wer::word_error_rate(SENTENCE, &text);
    assert!(wer < 0.5, "{order:?}: heard {text:?} (WER {wer:.2})");
    drop(orchestrator);
}

#[tokio::test]
async fn orchestrator_tts_stt() {
    let _gate = crate::GATE.enter(module_path!());
    run([Piece::Orchestrator, Piece::Tts, Piece::Stt]).await;
}

#[tokio::test]
async fn orchestrator_stt_tts() {
    let _gate = crate::GATE.enter(module_path!());
    run([Piece::Orchestrator, Piece::Stt, Piece::Tts]).await;
}

#[tokio::test]
async fn tts_orchestrator_stt() {
    let _gate = crate::GATE.enter(module_path!());
    run([Piece::Tts, Piece::Orchestrator, Piece::Stt]).await;
}

#[tokio::test]
async fn tts_stt_orchestrator() {
    let _gate = crate::GATE.enter(module_path!());
    run([Piece::Tts, Piece::Stt, Piece::Orchestrator]).await;
}

#[tokio::test]
async fn stt_orchestrator_tts() {
    let _gate = crate::GATE.enter(module_path!());
    run([Piece::Stt, Piece::Orchestrator, Piece::Tts]).await;
}

#[tokio::test]
async fn stt_tts_orchestrator() {
    let _gate = crate::GATE.enter(module_path!());
    run([Piece::Stt, Piece::Tts, Piece::Orchestrator]).await;
}
