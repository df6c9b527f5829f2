//! Shared by the proof tests: the faulty workers, the real workers, and the
//! table saying which cases each fault must fail.
#![allow(dead_code)]

pub mod faulty_stt;
pub mod faulty_tts;
pub mod health;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use voxwire_conformance::runner::{self, DrainTrigger, Report, RunConfig, Standing};
use voxwire_conformance::{Glob, Service};

use faulty_stt::SttFault;
use faulty_tts::TtsFault;

/// Fixed, so a proof test draws the same inputs every run.
pub const SEED: u64 = 20_261_124;
/// Inputs per property case in the proof tests.
pub const CASES: u32 = 6;

/// Which cases each TTS fault must fail. Every MUST and SHOULD TTS case
/// appears at least once (tests/it/coverage.rs checks it).
pub const TTS_FAULTS: &[(TtsFault, &[&str])] = &[
    (TtsFault::EmptyNonfinalFrame, &["tts/frame/empty-nonfinal"]),
    (TtsFault::WrongFrameSize, &["tts/frame/size"]),
    (TtsFault::FormatInvalid, &["tts/frame/format-invalid"]),
    (TtsFault::FormatChange, &["tts/frame/format-change"]),
    (TtsFault::SeqStartZero, &["tts/frame/seq-start"]),
    (TtsFault::SeqGap, &["tts/frame/seq-gap"]),
    (TtsFault::WrongSessionEcho, &["tts/frame/session-echo"]),
    (TtsFault::MissingFinal, &["tts/frame/final-missing"]),
    (TtsFault::DuplicateFinal, &["tts/frame/final-duplicate"]),
    (TtsFault::FrameAfterFinal, &["tts/frame/after-final"]),
    // latency-flat is skipped once early-first-frame failed (SUBSUMED).
    (
        TtsFault::BufferEverything,
        &["tts/stream/early-first-frame"],
    ),
    (TtsFault::BufferWholeInput, &["tts/stream/latency-flat"]),
    (
        TtsFault::BufferUntilHalfClose,
        &["tts/stream/early-first-frame", "tts/text/final-ends-input"],
    ),
    (TtsFault::IgnoreCancel, &["tts/cancel/frees"]),
    (
        TtsFault::SessionHeldAfterCancel,
        &["tts/regress/cancel-then-next-call-served"],
    ),
    (
        TtsFault::WrongStatusCodes,
        &[
            "tts/session/invalid-id",
            "tts/session/duplicate",
            "tts/session/unknown",
            "tts/session/unknown-model",
            "tts/session/capacity",
            "tts/text/chunk-session",
            "tts/text/limit",
        ],
    ),
    (
        TtsFault::HealthAlwaysServing,
        &["tts/health/unknown-service"],
    ),
    (
        TtsFault::HealthAbsent,
        &[
            "tts/health/check",
            "tts/health/watch",
            "tts/health/unknown-service",
        ],
    ),
    (TtsFault::WatchNotStreaming, &["tts/health/watch"]),
    (TtsFault::StopLeaks, &["tts/control/stop-scoped"]),
    (TtsFault::StopIgnored, &["tts/control/stop-scoped"]),
    (TtsFault::PauseIgnored, &["tts/control/pause-resume"]),
    (TtsFault::CapacityNotEnforced, &["tts/session/capacity"]),
    (TtsFault::CapacityHangs, &["tts/session/capacity"]),
    (TtsFault::OneCallPerSession, &["tts/session/many-calls"]),
    (TtsFault::EndSessionFails, &["tts/session/end-idempotent"]),
    (TtsFault::ChunkSessionIgnored, &["tts/text/chunk-session"]),
    (TtsFault::TextLimitIgnored, &["tts/text/limit"]),
    (
        TtsFault::RejectsTextWithoutLetters,
        &["tts/synthesize/completes"],
    ),
    (TtsFault::MetricsMissing, &["tts/caps/metrics"]),
    (TtsFault::DrainIgnored, &["tts/health/drain"]),
];

/// Which cases each STT fault must fail.
pub const STT_FAULTS: &[(SttFault, &[&str])] = &[
    (SttFault::EmptyPartial, &["stt/event/partial-empty"]),
    (
        SttFault::PartialUnrequested,
        &["stt/event/partial-unrequested"],
    ),
    (SttFault::SeqStartZero, &["stt/event/seq-start"]),
    (SttFault::SeqGap, &["stt/event/seq-gap"]),
    (SttFault::WrongSessionEcho, &["stt/event/session-echo"]),
    (SttFault::UtteranceIdZero, &["stt/event/utterance-id"]),
    (SttFault::DuplicateFinal, &["stt/event/utterance-closed"]),
    (SttFault::Overlap, &["stt/event/utterance-overlap"]),
    (SttFault::BadOffsets, &["stt/event/offsets"]),
    (
        SttFault::CloseWithOpenUtterance,
        &["stt/event/final-missing"],
    ),
    (
        SttFault::MissingEndFinal,
        &["stt/event/end-final", "stt/final/after-end-of-audio"],
    ),
    (SttFault::NeverCloses, &["stt/final/after-end-of-audio"]),
    (
        SttFault::AcceptAudioBeforeConfig,
        &["stt/request/config-first"],
    ),
    (SttFault::AcceptBadRate, &["stt/request/bad-rate"]),
    (SttFault::AcceptOddBytes, &["stt/request/odd-bytes"]),
    (SttFault::AcceptAfterEnd, &["stt/request/audio-after-end"]),
    (SttFault::IgnoreChunkLimit, &["stt/request/chunk-limit"]),
    (
        SttFault::IgnoreDurationLimit,
        &["stt/request/duration-limit"],
    ),
    (
        SttFault::AcceptInvalidSession,
        &["stt/request/invalid-session"],
    ),
    (SttFault::AcceptAnyModel, &["stt/request/unknown-model"]),
    (SttFault::AcceptAnyLanguage, &["stt/request/bad-language"]),
    (SttFault::CapacityNotEnforced, &["stt/capacity"]),
    (
        SttFault::HealthAlwaysServing,
        &["stt/health/unknown-service"],
    ),
    (
        SttFault::HealthAbsent,
        &[
            "stt/health/check",
            "stt/health/watch",
            "stt/health/unknown-service",
        ],
    ),
    (SttFault::WatchNotStreaming, &["stt/health/watch"]),
    (SttFault::MetricsMissing, &["stt/caps/metrics"]),
    (SttFault::DrainIgnored, &["stt/health/drain"]),
];

/// A worker under test: where it listens, and how to drain it (the drain
/// cases run last).
pub trait Worker {
    fn addr(&self) -> SocketAddr;
    fn stopper(&self) -> &Stopper;
}

/// Stops an in-process worker, once: dropping it stops it too.
#[derive(Clone)]
pub struct Stopper(Arc<Mutex<Option<oneshot::Sender<()>>>>);

impl Stopper {
    pub fn new(stop: oneshot::Sender<()>) -> Stopper {
        Stopper(Arc::new(Mutex::new(Some(stop))))
    }

    pub fn trigger(&self) -> DrainTrigger {
        let inner = Arc::clone(&self.0);
        DrainTrigger::new(move || {
            if let Some(stop) = inner.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = stop.send(());
            }
        })
    }
}

pub async fn run_suite(worker: &dyn Worker, service: Service, cases: &[&str]) -> Report {
    run_suite_with(worker, service, cases, CASES).await
}

/// Like [`run_suite`] with `inputs` generated inputs per property case: real
/// models are slow, and the faults are what needs many inputs.
pub async fn run_suite_with(
    worker: &dyn Worker,
    service: Service,
    cases: &[&str],
    inputs: u32,
) -> Report {
    let mut config = RunConfig::new(worker.addr().to_string(), service);
    config.drain = Some(worker.stopper().trigger());
    config.run = (!cases.is_empty()).then(|| Glob::new(&cases.join(",")));
    config.cases = inputs;
    config.seed = SEED;
    runner::run(&config).await.expect("the suite runs")
}

/// Asserts every listed case FAILED (and shows the report when not).
pub fn assert_fail(report: &Report, cases: &[&str], what: &str) {
    for id in cases {
        let result = report.get(id).unwrap_or_else(|| panic!("{id} did not run"));
        assert_eq!(
            result.standing,
            Standing::Fail,
            "{id} must FAIL against {what}:\n{}",
            voxwire_conformance::report::human(report)
        );
    }
}

/// Asserts nothing failed, and nothing that should have run was skipped.
pub fn assert_all_pass(report: &Report, what: &str, may_skip: &[&str]) {
    let human = voxwire_conformance::report::human(report);
    for result in &report.results {
        let ok = result.standing == Standing::Pass
            || (result.standing == Standing::Skip && may_skip.contains(&result.id));
        assert!(
            ok,
            "{} is {:?} against {what}:\n{human}",
            result.id, result.standing
        );
    }
    assert!(report.passed(), "{what} must conform:\n{human}");
}

/// Waits on the health Watch stream (never a sleep) for SERVING.
pub async fn wait_serving(addr: SocketAddr, service: &str) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("watch")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(update) = watch.next().await {
            if update.expect("update").status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("Watch ended before SERVING");
    })
    .await
    .expect("SERVING within 60 s");
}

/// A real worker, in process, serving until dropped.
pub struct RealWorker {
    pub addr: SocketAddr,
    stop: Stopper,
}

impl Worker for RealWorker {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn stopper(&self) -> &Stopper {
        &self.stop
    }
}

impl Worker for faulty_tts::RunningFake {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn stopper(&self) -> &Stopper {
        &self.stop
    }
}

impl Worker for faulty_stt::RunningFake {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn stopper(&self) -> &Stopper {
        &self.stop
    }
}

/// The reference TTS worker with the deterministic tone engine. A few
/// sessions only, so the capacity case stays quick.
pub async fn tone_tts_worker() -> RealWorker {
    let args = voxwire_tts_worker::server::Args {
        max_sessions: 6,
        max_text_chars: 3_000,
        ..voxwire_tts_worker::server::Args::tone_for_tests()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let running = voxwire_tts_worker::server::start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("tone worker starts");
    let addr = running.addr;
    // The worker runs in the background; dropping `stop` drains it.
    tokio::spawn(running.wait());
    wait_serving(addr, voxwire_proto::service_names::TTS).await;
    RealWorker {
        addr,
        stop: Stopper::new(stop),
    }
}

/// The real tts-worker with the Piper voice, or `None` (skipped, outside CI)
/// when the voice is not there.
pub async fn piper_tts_worker() -> Option<RealWorker> {
    let voice = voxwire_testkit::model_dir(voxwire_testkit::PIPER_JOE_MEDIUM)?;
    let args = voxwire_tts_worker::server::Args {
        engine: voxwire_tts_worker::server::EngineKind::Piper,
        voice: Some(voice),
        max_sessions: 6,
        max_text_chars: 3_000,
        ..voxwire_tts_worker::server::Args::tone_for_tests()
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let running = voxwire_tts_worker::server::start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("piper worker starts");
    let addr = running.addr;
    tokio::spawn(running.wait());
    wait_serving(addr, voxwire_proto::service_names::TTS).await;
    Some(RealWorker {
        addr,
        stop: Stopper::new(stop),
    })
}

/// The orchestrator in front of an in-process tone worker: its relayed
/// `tts.TTSService` is checked exactly as a worker is.
pub struct RelayedWorker {
    front: RealWorker,
    _back: RealWorker,
}

impl Worker for RelayedWorker {
    fn addr(&self) -> SocketAddr {
        self.front.addr
    }

    fn stopper(&self) -> &Stopper {
        &self.front.stop
    }
}

pub async fn orchestrator_over_tone() -> RelayedWorker {
    orchestrator_over(tone_tts_worker().await, Service::Tts).await
}

/// The orchestrator in front of `back`, a worker of the `service` kind.
pub async fn orchestrator_over(back: RealWorker, service: Service) -> RelayedWorker {
    use clap::Parser;
    let (pool_flag, service_name) = match service {
        Service::Tts => ("--tts", voxwire_proto::service_names::TTS),
        Service::Stt => ("--stt", voxwire_proto::service_names::STT),
    };
    let args = voxwire_orchestrator::config::Args::parse_from([
        "orchestrator",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        pool_flag,
        &back.addr.to_string(),
    ]);
    let (stop, stopped) = oneshot::channel::<()>();
    let running = voxwire_orchestrator::server::start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("orchestrator starts");
    let addr = running.addr;
    tokio::spawn(running.wait());
    // SERVING once the worker behind it is SERVING: the relay's readiness.
    wait_serving(addr, service_name).await;
    RelayedWorker {
        front: RealWorker {
            addr,
            stop: Stopper::new(stop),
        },
        _back: back,
    }
}

/// The real stt-worker on Whisper tiny.en, or `None` (skipped, outside CI)
/// when the model is not there.
pub async fn whisper_stt_worker() -> Option<RealWorker> {
    let model = voxwire_testkit::model_dir(voxwire_testkit::WHISPER_TINY_EN)?;
    let args = voxwire_stt_worker::server::Args {
        // The duration-limit case sends this much audio plus one second.
        max_stream_seconds: 20,
        ..voxwire_stt_worker::server::Args::for_tests(model)
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let running = voxwire_stt_worker::server::start(&args, async {
        let _ = stopped.await;
    })
    .await
    .expect("stt-worker starts");
    let addr = running.addr;
    tokio::spawn(running.wait());
    wait_serving(addr, voxwire_proto::service_names::STT).await;
    Some(RealWorker {
        addr,
        stop: Stopper::new(stop),
    })
}
