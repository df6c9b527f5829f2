//! Every TTS check can fail: each fault of the faulty worker fails the cases
//! the table in support/mod.rs names, and the real workers pass them all.
//!
//! Adding a real worker is one test like `piper_worker_conforms`.

mod support;

use support::faulty_tts::{self, TtsFault};
use support::{assert_all_pass, assert_fail, run_suite, TTS_FAULTS};
use voxwire_conformance::{CaseLevel, Service};

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
    let worker = support::tone_tts_worker().await;
    let report = run_suite(&worker, Service::Tts, &[]).await;
    assert_all_pass(&report, "the tone tts-worker", &[]);
}

/// Inputs per generated case against the real voice: a sentence takes a
/// few hundred milliseconds of CPU.
const PIPER_INPUTS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_worker_conforms() {
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
    let relay = support::orchestrator_over_tone().await;
    let report = run_suite(&relay, Service::Tts, &[]).await;
    assert_all_pass(&report, "the orchestrator relaying to a tone worker", &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_worker_without_a_fault_conforms() {
    let worker = faulty_tts::start(TtsFault::None).await;
    let report = run_suite(&worker, Service::Tts, &[]).await;
    assert_all_pass(&report, "the faulty worker with no fault", &[]);
}

macro_rules! fault_tests {
    ($($name:ident => $fault:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                fails_its_cases(TtsFault::$fault).await;
            }
        )*

        /// Every fault of the table has its test above.
        #[test]
        fn every_fault_in_the_table_has_a_test() {
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
