//! Every case the suite knows: a stable hierarchical id, a level, the rule of
//! `voxwire_proto::rules` it checks (none for behaviour the catalogue has no
//! rule for) and a one-line description. `conformance list` prints this.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use voxwire_proto::{Level, Rule};

use crate::client::Ctx;
use crate::outcome::CaseResult;
use crate::{stt, tts};

pub use crate::target::Service;

/// How much a failing case counts: a MUST failure fails the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum CaseLevel {
    Must,
    Should,
    /// Reported, never fails the run, needs no fault to prove it.
    Info,
}

impl CaseLevel {
    pub const fn as_str(self) -> &'static str {
        match self {
            CaseLevel::Must => "MUST",
            CaseLevel::Should => "SHOULD",
            CaseLevel::Info => "INFO",
        }
    }
}

impl From<Level> for CaseLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Must => CaseLevel::Must,
            Level::Should => CaseLevel::Should,
        }
    }
}

impl fmt::Display for CaseLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub(crate) type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send>>;
pub(crate) type CaseFn = fn(Ctx) -> CaseFuture;

/// One case of the catalogue.
pub struct CaseDef {
    pub id: &'static str,
    pub service: Service,
    pub level: CaseLevel,
    pub rule: Option<Rule>,
    pub summary: &'static str,
    pub(crate) run: CaseFn,
}

impl fmt::Debug for CaseDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaseDef")
            .field("id", &self.id)
            .field("level", &self.level)
            .field("rule", &self.rule)
            .finish_non_exhaustive()
    }
}

impl CaseDef {
    /// The rule id, or `-` for behaviour outside the rule catalogue.
    pub fn rule_id(&self) -> &'static str {
        self.rule.map_or("-", Rule::id)
    }
}

macro_rules! case {
    ($id:literal, $service:ident, $level:ident, $rule:expr, $summary:expr, $f:expr) => {
        CaseDef {
            id: $id,
            service: Service::$service,
            level: CaseLevel::$level,
            rule: $rule,
            summary: $summary,
            run: |ctx| Box::pin($f(ctx)),
        }
    };
}

macro_rules! tts_frame {
    ($id:literal, $variant:ident) => {
        case!(
            $id,
            Tts,
            Must,
            Some(Rule::$variant),
            // The rule says it best; generated texts and chunkings exercise it.
            Rule::$variant.summary(),
            |ctx| tts::frame_rule(ctx, Rule::$variant)
        )
    };
}

macro_rules! stt_event {
    ($id:literal, $level:ident, $variant:ident) => {
        case!(
            $id,
            Stt,
            $level,
            Some(Rule::$variant),
            Rule::$variant.summary(),
            |ctx| stt::event_rule(ctx, Rule::$variant)
        )
    };
}

static CATALOGUE: &[CaseDef] = &[
    // TTS: health.
    case!("tts/health/check", Tts, Must, Some(Rule::HealthServices),
        "grpc.health.v1 Check answers SERVING for \"\" and for tts.TTSService.",
        |ctx| crate::client::health_check(ctx, Service::Tts)),
    case!("tts/health/watch", Tts, Must, Some(Rule::HealthWatch),
        "Watch for \"\" and tts.TTSService sends the current status at once and keeps streaming.",
        |ctx| crate::client::health_watch(ctx, Service::Tts)),
    case!("tts/health/unknown-service", Tts, Should, None,
        "For a service the worker does not serve, Check answers NOT_FOUND and Watch sends SERVICE_UNKNOWN and stays open (grpc health spec).",
        crate::client::health_unknown),
    // TTS: sessions and requests.
    case!("tts/session/invalid-id", Tts, Must, Some(Rule::SessionIdInvalid),
        "StartSession with generated empty, blank, control-character or over-long ids fails INVALID_ARGUMENT.",
        tts::invalid_id),
    case!("tts/session/duplicate", Tts, Must, Some(Rule::TtsSessionDuplicate),
        "StartSession with the id of an open session fails ALREADY_EXISTS.",
        tts::duplicate),
    case!("tts/session/unknown", Tts, Must, Some(Rule::TtsSessionUnknown),
        "Synthesize and Control naming a session that is not open fail NOT_FOUND.",
        tts::unknown_session),
    case!("tts/session/unknown-model", Tts, Must, Some(Rule::TtsModelUnknown),
        "StartSession naming a model the worker does not have fails NOT_FOUND.",
        tts::unknown_model),
    case!("tts/session/capacity", Tts, Must, Some(Rule::TtsCapacity),
        "max_concurrent_sessions sessions open and synthesize at once; one more fails RESOURCE_EXHAUSTED at once.",
        tts::capacity),
    case!("tts/session/end-idempotent", Tts, Must, Some(Rule::TtsEndIdempotent),
        "EndSession succeeds for an open session, again for the same one, and for one never opened.",
        tts::end_idempotent),
    case!("tts/session/many-calls", Tts, Must, None,
        "One session carries several Synthesize calls in turn, each a valid stream.",
        tts::many_calls),
    case!("tts/text/chunk-session", Tts, Must, Some(Rule::TtsChunkSession),
        "A TextChunk naming another session than the call's first fails INVALID_ARGUMENT.",
        tts::chunk_session),
    case!("tts/text/final-ends-input", Tts, Must, None,
        "A chunk with is_final ends the input as a half-close does: the call ends (final frame, OK) while the client's request stream stays open.",
        tts::final_ends_input),
    case!("tts/text/limit", Tts, Must, Some(Rule::TtsTextLimit),
        "Text of exactly max_text_chars is spoken; one character more fails INVALID_ARGUMENT.",
        tts::text_limit),
    case!("tts/synthesize/completes", Tts, Must, None,
        "Every generated text (empty, blank, punctuation, unicode, long; any chunking) ends with OK in time.",
        tts::completes),
    // TTS: the frame rules, one case each.
    tts_frame!("tts/frame/empty-nonfinal", TtsFrameEmptyNonfinal),
    tts_frame!("tts/frame/size", TtsFrameSize),
    tts_frame!("tts/frame/format-invalid", TtsFormatInvalid),
    tts_frame!("tts/frame/format-change", TtsFormatChange),
    tts_frame!("tts/frame/seq-start", TtsSeqStart),
    tts_frame!("tts/frame/seq-gap", TtsSeqGap),
    tts_frame!("tts/frame/session-echo", TtsSessionEcho),
    tts_frame!("tts/frame/final-missing", TtsFinalMissing),
    tts_frame!("tts/frame/final-duplicate", TtsFinalDuplicate),
    tts_frame!("tts/frame/after-final", TtsFrameAfterFinal),
    // TTS: behaviour over time.
    case!("tts/stream/early-first-frame", Tts, Should, Some(Rule::TtsStreamEarly),
        "With one complete sentence sent and the input still open, the first frame arrives.",
        tts::early_first_frame),
    case!("tts/stream/latency-flat", Tts, Should, Some(Rule::TtsStreamEarly),
        "First-frame latency for ten sentences is within 2x (+25 ms) of that for one sentence.",
        tts::latency_flat),
    case!("tts/control/stop-scoped", Tts, Must, Some(Rule::TtsStopScoped),
        "STOP ends its own session's synthesis with a final frame, not another's; the session stays usable.",
        tts::stop_scoped),
    case!("tts/control/pause-resume", Tts, Must, Some(Rule::TtsStopScoped),
        "PAUSE holds a session's frames, RESUME lets the rest of the same stream through.",
        tts::pause_resume),
    case!("tts/cancel/frees", Tts, Must, Some(Rule::TtsCancelFrees),
        "A cancelled call gives back its stream (active_streams returns), and the next request is served.",
        tts::cancel_frees),
    // TTS: regressions, each named after a protocol bug found.
    case!("tts/regress/cancel-then-next-call-served", Tts, Must, Some(Rule::TtsCancelFrees),
        "Regression (orchestrator kept a cancelled Speak's session lock): right after a call is cancelled, the next call on its session is served at once.",
        tts::cancel_then_next),
    case!("tts/caps/metrics", Tts, Should, Some(Rule::CapsMetrics),
        "GetCapabilities reports active_sessions, active_streams and max_sessions, and they track reality.",
        |ctx| crate::client::caps_metrics(ctx, Service::Tts)),
    case!("tts/info/models", Tts, Info, None,
        "ListModels and GetCapabilities answer; the models and limits are reported.",
        tts::info_models),
    // Last: it ends the worker.
    case!("tts/health/drain", Tts, Should, Some(Rule::HealthDrain),
        "On drain (SIGTERM): NOT_SERVING on Watch, StartSession UNAVAILABLE, the call in flight finishes. Only when the suite started the worker.",
        tts::health_drain),
    // STT: health.
    case!("stt/health/check", Stt, Must, Some(Rule::HealthServices),
        "grpc.health.v1 Check answers SERVING for \"\" and for stt.STTService.",
        |ctx| crate::client::health_check(ctx, Service::Stt)),
    case!("stt/health/watch", Stt, Must, Some(Rule::HealthWatch),
        "Watch for \"\" and stt.STTService sends the current status at once and keeps streaming.",
        |ctx| crate::client::health_watch(ctx, Service::Stt)),
    case!("stt/health/unknown-service", Stt, Should, None,
        "For a service the worker does not serve, Check answers NOT_FOUND and Watch sends SERVICE_UNKNOWN and stays open (grpc health spec).",
        crate::client::health_unknown),
    // STT: the client's requests.
    case!("stt/request/config-first", Stt, Must, Some(Rule::SttConfigFirst),
        "Audio before config, and a second config, fail INVALID_ARGUMENT.",
        stt::config_first),
    case!("stt/request/invalid-session", Stt, Must, Some(Rule::SessionIdInvalid),
        "A config with an empty or blank session id fails INVALID_ARGUMENT.",
        stt::invalid_session),
    case!("stt/request/bad-rate", Stt, Must, Some(Rule::SttConfigRate),
        "A config with a generated sample rate outside 8000..=48000 Hz fails INVALID_ARGUMENT.",
        stt::bad_rate),
    case!("stt/request/unknown-model", Stt, Must, Some(Rule::SttModelUnknown),
        "A config naming a model the worker does not list as resident fails NOT_FOUND; the resident one is accepted.",
        stt::unknown_model),
    case!("stt/request/bad-language", Stt, Must, Some(Rule::SttLanguageUnsupported),
        "A config with a malformed or unoffered language fails INVALID_ARGUMENT; a region of an offered language is accepted.",
        stt::bad_language),
    case!("stt/request/odd-bytes", Stt, Must, Some(Rule::SttAudioOddBytes),
        "An audio chunk with a generated odd byte count fails INVALID_ARGUMENT.",
        stt::odd_bytes),
    case!("stt/request/audio-after-end", Stt, Must, Some(Rule::SttAudioAfterEnd),
        "An audio chunk after the one with is_final fails INVALID_ARGUMENT.",
        stt::audio_after_end),
    case!("stt/request/chunk-limit", Stt, Must, Some(Rule::SttChunkLimit),
        "A chunk of max_chunk_bytes is accepted; one sample more fails INVALID_ARGUMENT.",
        stt::chunk_limit),
    case!("stt/request/duration-limit", Stt, Must, Some(Rule::SttDurationLimit),
        "Audio beyond max_stream_seconds fails OUT_OF_RANGE.",
        stt::duration_limit),
    case!("stt/capacity", Stt, Must, Some(Rule::SttCapacity),
        "max_concurrent_sessions streams are served at once; one more fails RESOURCE_EXHAUSTED at once.",
        stt::capacity),
    // STT: the event rules, one case each.
    stt_event!("stt/event/partial-empty", Must, SttPartialEmpty),
    stt_event!("stt/event/partial-unrequested", Should, SttPartialUnrequested),
    stt_event!("stt/event/seq-start", Must, SttSeqStart),
    stt_event!("stt/event/seq-gap", Must, SttSeqGap),
    stt_event!("stt/event/session-echo", Must, SttSessionEcho),
    stt_event!("stt/event/utterance-id", Must, SttUtteranceId),
    stt_event!("stt/event/utterance-closed", Must, SttUtteranceClosed),
    stt_event!("stt/event/utterance-overlap", Must, SttUtteranceOverlap),
    stt_event!("stt/event/offsets", Must, SttOffsets),
    stt_event!("stt/event/final-missing", Must, SttFinalMissing),
    stt_event!("stt/event/end-final", Must, SttEndFinal),
    case!("stt/final/after-end-of-audio", Stt, Must, Some(Rule::SttEndFinal),
        "After the client's end of audio (is_final chunk or half-close) a final arrives and the stream closes in time.",
        stt::final_after_end),
    case!("stt/caps/metrics", Stt, Should, Some(Rule::CapsMetrics),
        "GetCapabilities reports active_sessions, active_streams and max_sessions, and max_sessions matches.",
        |ctx| crate::client::caps_metrics(ctx, Service::Stt)),
    case!("stt/info/capabilities", Stt, Info, None,
        "GetCapabilities answers; sample rates, languages and limits are reported.",
        stt::info_capabilities),
    // Last: it ends the worker.
    case!("stt/health/drain", Stt, Should, Some(Rule::HealthDrain),
        "On drain (SIGTERM): NOT_SERVING on Watch, Recognize UNAVAILABLE, the stream in flight finishes. Only when the suite started the worker.",
        stt::health_drain),
];

/// Cases skipped when another case of the same rule, run before them,
/// already failed: (case, the case that checks its rule more directly). A
/// worker that buffers until the end of input fails both streaming cases for
/// one reason; the report names it once.
pub const SUBSUMED: &[(&str, &str)] =
    &[("tts/stream/latency-flat", "tts/stream/early-first-frame")];

/// Every case, TTS first, in a stable order.
pub fn catalogue() -> &'static [CaseDef] {
    CATALOGUE
}

/// Looks a case up by id.
pub fn find(id: &str) -> Option<&'static CaseDef> {
    CATALOGUE.iter().find(|case| case.id == id)
}

/// The rules of `voxwire_proto` no case checks, with why: the ones a worker
/// cannot be tested for from the outside of a running process.
pub const UNCHECKED_RULES: &[(Rule, &str)] = &[
    (
        Rule::HealthReady,
        "needs the worker watched from before its model loads",
    ),
    (Rule::HealthGate, "needs the worker in a NOT_SERVING state"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_hierarchical_and_prefixed_by_service() {
        let mut seen = HashSet::new();
        for case in catalogue() {
            assert!(seen.insert(case.id), "duplicate {}", case.id);
            assert!(
                case.id.starts_with(&format!("{}/", case.service.as_str())),
                "{}",
                case.id
            );
            assert!(case.id.split('/').count() >= 2);
            assert!(case
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '/' || c == '-'));
        }
    }

    #[test]
    fn a_subsumed_case_runs_after_the_case_that_subsumes_it_and_shares_its_rule() {
        let index = |id: &str| catalogue().iter().position(|c| c.id == id);
        for (case, by) in SUBSUMED {
            let (Some(case_at), Some(by_at)) = (index(case), index(by)) else {
                panic!("{case} or {by} is not in the catalogue");
            };
            assert!(by_at < case_at, "{by} must run before {case}");
            assert_eq!(catalogue()[case_at].rule, catalogue()[by_at].rule);
        }
    }

    #[test]
    fn levels_follow_rules() {
        for case in catalogue() {
            if let (Some(rule), false) = (case.rule, case.level == CaseLevel::Info) {
                assert_eq!(case.level, CaseLevel::from(rule.level()), "{}", case.id);
            }
        }
    }

    #[test]
    fn every_rule_is_checked_or_explained() {
        for rule in Rule::ALL {
            let checked = catalogue().iter().any(|c| c.rule == Some(*rule));
            let explained = UNCHECKED_RULES.iter().any(|(r, _)| r == rule);
            assert!(
                checked ^ explained,
                "{rule}: checked {checked}, explained {explained}"
            );
        }
    }
}
