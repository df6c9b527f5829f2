//! Every TTS check can fail: each fault of the faulty worker fails the cases
//! the table in support/mod.rs names, and the real workers pass them all.
//!
//! Adding a real worker is one test like `piper_worker_conforms`.

use crate::support;

use std::time::{Duration, Instant};

use crate::support::faulty_tts::{self, TtsFault};
use crate::support::{assert_all_pass, assert_fail, run_suite, Worker, TTS_FAULTS};
use voxwire_conformance::outcome::Outcome;
use voxwire_conformance::runner::{self, RunConfig, Standing};
use voxwire_conformance::{CaseLevel, Service};

/// The CLI's default --cases.
const DEFAULT_INPUTS: u32 = 8;

async fn fails_its_cases(fault: TtsFault) {
    let cases = TTS_FAULTS
        .iter()
        .find(|(f, _)| *f == fault)
        .map(|(_, cases)| *cases)
        .expect("the fault is in the table");
    let worker = faulty_tts::start(fault).await;
    let report = run_suite(&worker, Service::Tts, cases).await;
    assert_fail(&report, cases, &format!("{fault:?}"));
    let must = cases.iter().any(|id| {
        voxwire_conformance::catalogue::find(id).is_some_and(|c| c.level == CaseLevel::Must)
    });
    assert_eq!(report.passed(), !must, "only a MUST failure fails the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tone_worker_conforms() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = support::tone_tts_worker().await;
    let report = run_suite(&worker, Service::Tts, &[]).await;
    assert_all_pass(&report, "the tone tts-worker", &[]);
}

/// Inputs per generated case against the real voice: a sentence takes a
/// few hundred milliseconds of CPU.
const PIPER_INPUTS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_worker_conforms() {
    let _gate = crate::GATE.enter(module_path!());
    let Some(worker) = support::piper_tts_worker().await else {
        return;
    };
    let report = support::run_suite_with(&worker, Service::Tts, &[], PIPER_INPUTS).await;
    assert_all_pass(&report, "the Piper tts-worker", &[]);
}

/// The orchestrator is itself a conformant worker endpoint: its relay of
/// `tts.TTSService` passes every case against a tone worker behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_relay_conforms() {
    let _gate = crate::GATE.enter(module_path!());
    let relay = support::orchestrator_over_tone().await;
    let report = run_suite(&relay, Service::Tts, &[]).await;
    assert_all_pass(&report, "the orchestrator relaying to a tone worker", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_worker_without_a_fault_conforms() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = faulty_tts::start(TtsFault::None).await;
    let report = run_suite(&worker, Service::Tts, &[]).await;
    assert_all_pass(&report, "the faulty worker with no fault", &[]);
}

/// The bound: the CLI's default run (8 inputs per generated case,
/// default case timeout) against a worker that holds every frame until the
/// client half-closes ends within 180 s, names TTS-STREAM-EARLY once, with
/// what the worker did, and fails the run (a MUST: is_final ends the input).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_a_worker_buffering_until_half_close_is_bounded_and_names_the_rule() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = faulty_tts::start(TtsFault::BufferUntilHalfClose).await;
    let started = Instant::now();
    let report = support::run_suite_with(&worker, Service::Tts, &[], DEFAULT_INPUTS).await;
    let took = started.elapsed();
    let human = voxwire_conformance::report::human(&report);
    eprintln!("{human}");
    assert!(
        took < Duration::from_secs(180),
        "the run took {took:?}:\n{human}"
    );
    let early: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.rule == "TTS-STREAM-EARLY" && r.standing == Standing::Fail)
        .collect();
    assert_eq!(early.len(), 1, "TTS-STREAM-EARLY reported once:\n{human}");
    let Outcome::Fail(failure) = &early[0].outcome else {
        unreachable!("a failed case has a failure")
    };
    assert!(
        failure.actual.contains("after the input closed"),
        "the report says what the worker did: {failure:?}"
    );
    assert_eq!(
        report.get("tts/stream/latency-flat").map(|r| r.standing),
        Some(Standing::Skip)
    );
    assert_eq!(
        report.get("tts/text/final-ends-input").map(|r| r.standing),
        Some(Standing::Fail)
    );
    assert!(!report.passed(), "a MUST failed: the run exits non-zero");
}

/// A worker that never answers Synthesize: each case that needs an answer
/// fails at the case deadline with "no answer within N s", the run goes on
/// to the end, and the whole run is bounded by cases x deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_a_worker_that_never_answers_synthesize_ends_each_case_at_its_deadline() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = faulty_tts::start(TtsFault::SynthesizeHangs).await;
    let deadline = Duration::from_secs(3);
    let mut config = RunConfig::new(worker.addr().to_string(), Service::Tts);
    config.drain = Some(support::Worker::stopper(&worker).trigger());
    config.cases = DEFAULT_INPUTS;
    config.seed = support::SEED;
    config.case_timeout = deadline;
    let started = Instant::now();
    let report = runner::run(&config).await.expect("the suite runs");
    let took = started.elapsed();
    let human = voxwire_conformance::report::human(&report);
    eprintln!("{human}");
    let bound = deadline * report.results.len() as u32 + Duration::from_secs(10);
    assert!(
        took < bound,
        "the run took {took:?} (bound {bound:?}):\n{human}"
    );
    for id in [
        "tts/synthesize/completes",
        "tts/frame/size",
        "tts/session/many-calls",
        "tts/text/final-ends-input",
    ] {
        let result = report.get(id).expect("the case ran");
        assert_eq!(result.standing, Standing::Fail, "{id}:\n{human}");
    }
    let completes = report.get("tts/synthesize/completes").expect("ran");
    let Outcome::Fail(failure) = &completes.outcome else {
        unreachable!("failed")
    };
    assert!(
        failure.actual.contains("no answer within 3 s"),
        "{failure:?}"
    );
    // The run went on: cases that need no Synthesize answer still pass.
    assert_eq!(
        report.get("tts/health/check").map(|r| r.standing),
        Some(Standing::Pass)
    );
    assert!(!report.passed());
}

macro_rules! fault_tests {
    ($($name:ident => $fault:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let _gate = crate::GATE.enter(module_path!());
                fails_its_cases(TtsFault::$fault).await;
            }
        )*

        /// Every fault of the table has its test above.
        #[test]
        fn every_fault_in_the_table_has_a_test() {
            let _gate = crate::GATE.enter(module_path!());
            let tested = [$(TtsFault::$fault),*];
            for (fault, _) in TTS_FAULTS {
                assert!(tested.contains(fault), "{fault:?} has no test");
            }
        }
    };
}

fault_tests! {
    empty_nonfinal_frame => EmptyNonfinalFrame,
    wrong_frame_size => WrongFrameSize,
    format_invalid => FormatInvalid,
    format_change => FormatChange,
    seq_start_zero => SeqStartZero,
    seq_gap => SeqGap,
    wrong_session_echo => WrongSessionEcho,
    missing_final => MissingFinal,
    duplicate_final => DuplicateFinal,
    frame_after_final => FrameAfterFinal,
    buffer_everything => BufferEverything,
    buffer_whole_input => BufferWholeInput,
    buffer_until_half_close => BufferUntilHalfClose,
    ignore_cancel => IgnoreCancel,
    session_held_after_cancel => SessionHeldAfterCancel,
    wrong_status_codes => WrongStatusCodes,
    health_always_serving => HealthAlwaysServing,
    health_absent => HealthAbsent,
    watch_not_streaming => WatchNotStreaming,
    stop_leaks => StopLeaks,
    stop_ignored => StopIgnored,
    pause_ignored => PauseIgnored,
    capacity_not_enforced => CapacityNotEnforced,
    capacity_hangs => CapacityHangs,
    one_call_per_session => OneCallPerSession,
    end_session_fails => EndSessionFails,
    chunk_session_ignored => ChunkSessionIgnored,
    text_limit_ignored => TextLimitIgnored,
    rejects_text_without_letters => RejectsTextWithoutLetters,
    metrics_missing => MetricsMissing,
    drain_ignored => DrainIgnored,
}
