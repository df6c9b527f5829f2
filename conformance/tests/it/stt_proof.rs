//! Every STT check can fail: each fault of the faulty STT worker fails the
//! cases the table in support/mod.rs names, and a conforming worker passes.
//!
//! Another real worker is one more test like `whisper_worker_conforms`.

use crate::support;

use crate::support::faulty_stt::{self, SttFault};
use crate::support::{assert_all_pass, assert_fail, run_suite, STT_FAULTS};
use voxwire_conformance::{CaseLevel, Service};

async fn fails_its_cases(fault: SttFault) {
    let cases = STT_FAULTS
        .iter()
        .find(|(f, _)| *f == fault)
        .map(|(_, cases)| *cases)
        .expect("the fault is in the table");
    let worker = faulty_stt::start(fault).await;
    let report = run_suite(&worker, Service::Stt, cases).await;
    assert_fail(&report, cases, &format!("{fault:?}"));
    let must = cases.iter().any(|id| {
        voxwire_conformance::catalogue::find(id).is_some_and(|c| c.level == CaseLevel::Must)
    });
    assert_eq!(report.passed(), !must, "only a MUST failure fails the run");
}

/// Inputs per generated case against the real model: Whisper on a CPU takes
/// a second or so per stream.
const WHISPER_INPUTS: u32 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whisper_worker_conforms() {
    let _gate = crate::GATE.enter(module_path!());
    let Some(worker) = support::whisper_stt_worker().await else {
        return;
    };
    let report = support::run_suite_with(&worker, Service::Stt, &[], WHISPER_INPUTS).await;
    assert_all_pass(&report, "the Whisper stt-worker", &[]);
}

/// The orchestrator's relayed `stt.STTService` passes every case with the
/// Whisper worker behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestrator_relay_conforms() {
    let _gate = crate::GATE.enter(module_path!());
    let Some(back) = support::whisper_stt_worker().await else {
        return;
    };
    let relay = support::orchestrator_over(back, Service::Stt).await;
    let report = support::run_suite_with(&relay, Service::Stt, &[], WHISPER_INPUTS).await;
    assert_all_pass(
        &report,
        "the orchestrator relaying to the Whisper worker",
        &[],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_worker_without_a_fault_conforms() {
    let _gate = crate::GATE.enter(module_path!());
    let worker = faulty_stt::start(SttFault::None).await;
    let report = run_suite(&worker, Service::Stt, &[]).await;
    assert_all_pass(&report, "the faulty STT worker with no fault", &[]);
}

macro_rules! fault_tests {
    ($($name:ident => $fault:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let _gate = crate::GATE.enter(module_path!());
                fails_its_cases(SttFault::$fault).await;
            }
        )*

        #[test]
        fn every_fault_in_the_table_has_a_test() {
            let _gate = crate::GATE.enter(module_path!());
            let tested = [$(SttFault::$fault),*];
            for (fault, _) in STT_FAULTS {
                assert!(tested.contains(fault), "{fault:?} has no test");
            }
        }
    };
}

fault_tests! {
    empty_partial => EmptyPartial,
    partial_unrequested => PartialUnrequested,
    seq_start_zero => SeqStartZero,
    seq_gap => SeqGap,
    wrong_session_echo => WrongSessionEcho,
    utterance_id_zero => UtteranceIdZero,
    duplicate_final => DuplicateFinal,
    overlap => Overlap,
    bad_offsets => BadOffsets,
    close_with_open_utterance => CloseWithOpenUtterance,
    missing_end_final => MissingEndFinal,
    never_closes => NeverCloses,
    accept_audio_before_config => AcceptAudioBeforeConfig,
    accept_bad_rate => AcceptBadRate,
    accept_odd_bytes => AcceptOddBytes,
    accept_after_end => AcceptAfterEnd,
    ignore_chunk_limit => IgnoreChunkLimit,
    ignore_duration_limit => IgnoreDurationLimit,
    accept_invalid_session => AcceptInvalidSession,
    accept_any_model => AcceptAnyModel,
    accept_any_language => AcceptAnyLanguage,
    capacity_not_enforced => CapacityNotEnforced,
    health_always_serving => HealthAlwaysServing,
    health_absent => HealthAbsent,
    watch_not_streaming => WatchNotStreaming,
    metrics_missing => MetricsMissing,
    drain_ignored => DrainIgnored,
}
