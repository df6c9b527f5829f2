//! The rule catalogue: one entry per protocol rule, with a stable ID, a level,
//! the gRPC status code a party answers with when its peer breaks the rule, and
//! a one-line summary. docs/protocol.md has one section per entry (a test checks
//! that the two lists agree) and the conformance suite names its cases after them.

use std::fmt;

/// How binding a rule is, in the sense of RFC 2119.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Must,
    Should,
}

impl Level {
    pub const fn as_str(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! rules {
    ($( $variant:ident = $id:literal, $level:ident, $code:ident, $summary:literal; )*) => {
        /// A protocol rule. See docs/protocol.md for each one's full text.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Rule {
            $( #[doc = $summary] $variant, )*
        }

        impl Rule {
            /// Every rule, in catalogue order.
            pub const ALL: &'static [Rule] = &[ $( Rule::$variant, )* ];

            /// The stable ID, e.g. `TTS-FRAME-EMPTY-NONFINAL`.
            pub const fn id(self) -> &'static str {
                match self { $( Rule::$variant => $id, )* }
            }

            pub const fn level(self) -> Level {
                match self { $( Rule::$variant => Level::$level, )* }
            }

            /// The status a party answers with when its peer breaks this rule.
            /// For rules on what a worker sends, it is the code an orchestrator
            /// ends the turn with (`INTERNAL`: the worker is at fault, and a
            /// retry of the same input elsewhere is not implied).
            pub fn code(self) -> tonic::Code {
                match self { $( Rule::$variant => tonic::Code::$code, )* }
            }

            pub const fn summary(self) -> &'static str {
                match self { $( Rule::$variant => $summary, )* }
            }

            /// Looks a rule up by its ID.
            pub fn from_id(id: &str) -> Option<Rule> {
                Rule::ALL.iter().copied().find(|rule| rule.id() == id)
            }
        }
    };
}

rules! {
    // Sessions (both services).
    SessionIdInvalid = "SESSION-ID-INVALID", Must, InvalidArgument,
        "A session id is 1 to 256 bytes of printable text; an empty or malformed id is rejected with INVALID_ARGUMENT.";

    // TTS: session lifecycle and requests.
    TtsSessionDuplicate = "TTS-SESSION-DUPLICATE", Must, AlreadyExists,
        "StartSession with the id of a session that is open fails with ALREADY_EXISTS.";
    TtsSessionUnknown = "TTS-SESSION-UNKNOWN", Must, NotFound,
        "Synthesize or Control naming a session that is not open fails with NOT_FOUND.";
    TtsModelUnknown = "TTS-MODEL-UNKNOWN", Must, NotFound,
        "StartSession naming a model the worker does not have fails with NOT_FOUND.";
    TtsCapacity = "TTS-CAPACITY", Must, ResourceExhausted,
        "Past max_concurrent_sessions, StartSession fails at once with RESOURCE_EXHAUSTED, never hangs.";
    TtsEndIdempotent = "TTS-END-IDEMPOTENT", Must, Ok,
        "EndSession succeeds for an open session and for one that is already gone.";
    TtsChunkSession = "TTS-CHUNK-SESSION", Must, InvalidArgument,
        "Every TextChunk of one Synthesize call names the same session; a chunk naming another fails with INVALID_ARGUMENT.";
    TtsTextLimit = "TTS-TEXT-LIMIT", Must, InvalidArgument,
        "Text beyond the worker's limit (metrics key max_text_chars) fails with INVALID_ARGUMENT; it is never truncated silently.";

    // TTS: the frames of one Synthesize stream.
    TtsFrameEmptyNonfinal = "TTS-FRAME-EMPTY-NONFINAL", Must, Internal,
        "A frame with no audio must have is_final set: an empty non-final frame is invalid.";
    TtsFrameSize = "TTS-FRAME-SIZE", Must, Internal,
        "A non-final frame holds exactly sample_rate x frame_duration_ms / 1000 samples of 2 bytes; a final data frame holds an even number of bytes, at most that many.";
    TtsFormatInvalid = "TTS-FORMAT-INVALID", Must, Internal,
        "A data frame's sample_rate is 8000 to 192000 Hz and its frame_duration_ms 1 to 1000, spanning a whole number of samples.";
    TtsFormatChange = "TTS-FORMAT-CHANGE", Must, Internal,
        "sample_rate and frame_duration_ms are the same on every data frame of a stream.";
    TtsSeqStart = "TTS-SEQ-START", Must, Internal,
        "The first frame of a Synthesize stream has sequence_number 1.";
    TtsSeqGap = "TTS-SEQ-GAP", Must, Internal,
        "Each frame's sequence_number is one more than the previous frame's: no gaps, repeats or reordering.";
    TtsSessionEcho = "TTS-SESSION-ECHO", Must, Internal,
        "Every frame carries the session id of the call it answers.";
    TtsFinalMissing = "TTS-FINAL-MISSING", Must, Internal,
        "A Synthesize stream that ends with OK has exactly one frame with is_final set, and it is the last.";
    TtsFinalDuplicate = "TTS-FINAL-DUPLICATE", Must, Internal,
        "No second frame with is_final follows the first.";
    TtsFrameAfterFinal = "TTS-FRAME-AFTER-FINAL", Must, Internal,
        "No frame follows the frame with is_final set.";

    // TTS: behaviour over time.
    TtsStreamEarly = "TTS-STREAM-EARLY", Should, Ok,
        "Audio starts once the first sentence is complete, before the client's input ends; first-frame latency does not grow with the length of the text.";
    TtsStopScoped = "TTS-STOP-SCOPED", Must, Ok,
        "Control STOP ends the current synthesis of that session only, with a final frame; the session stays usable. PAUSE and RESUME also act on that session only.";
    TtsCancelFrees = "TTS-CANCEL-FREES", Must, Ok,
        "When the client cancels a call, synthesis stops and its capacity is returned; the next request is served.";

    // STT: the client's requests.
    SttConfigFirst = "STT-CONFIG-FIRST", Must, InvalidArgument,
        "The first RecognizeRequest carries config, and no later one does; otherwise INVALID_ARGUMENT.";
    SttConfigRate = "STT-CONFIG-RATE", Must, InvalidArgument,
        "config.sample_rate is 8000 to 48000 Hz; otherwise INVALID_ARGUMENT.";
    SttModelUnknown = "STT-MODEL-UNKNOWN", Must, NotFound,
        "A config naming a model_id the worker does not list in GetCapabilities resident_models fails with NOT_FOUND; empty means the worker's default.";
    SttLanguageUnsupported = "STT-LANGUAGE-UNSUPPORTED", Must, InvalidArgument,
        "A non-empty config.language is a well-formed BCP-47 tag whose primary language is one GetCapabilities lists (en-US for en); otherwise INVALID_ARGUMENT.";
    SttAudioOddBytes = "STT-AUDIO-ODD-BYTES", Must, InvalidArgument,
        "Every audio chunk holds whole 16-bit samples (an even byte count); otherwise INVALID_ARGUMENT.";
    SttAudioAfterEnd = "STT-AUDIO-AFTER-END", Must, InvalidArgument,
        "No request follows an audio chunk with is_final set; otherwise INVALID_ARGUMENT.";
    SttChunkLimit = "STT-CHUNK-LIMIT", Must, InvalidArgument,
        "An audio chunk larger than the worker's limit (metrics key max_chunk_bytes) fails with INVALID_ARGUMENT.";
    SttDurationLimit = "STT-DURATION-LIMIT", Must, OutOfRange,
        "Audio beyond the worker's stream limit (metrics key max_stream_seconds) fails with OUT_OF_RANGE.";
    SttCapacity = "STT-CAPACITY", Must, ResourceExhausted,
        "Past max_concurrent_sessions, Recognize fails at once with RESOURCE_EXHAUSTED, never hangs.";

    // STT: the transcript events of one Recognize stream.
    SttPartialEmpty = "STT-PARTIAL-EMPTY", Must, Internal,
        "A partial event (is_final false) carries non-blank text.";
    SttPartialUnrequested = "STT-PARTIAL-UNREQUESTED", Should, Internal,
        "No partial events are sent to a client whose config did not ask for them.";
    SttSeqStart = "STT-SEQ-START", Must, Internal,
        "The first event of a Recognize stream has sequence_number 1.";
    SttSeqGap = "STT-SEQ-GAP", Must, Internal,
        "Each event's sequence_number is one more than the previous event's.";
    SttSessionEcho = "STT-SESSION-ECHO", Must, Internal,
        "Every event carries the session id of the stream's config.";
    SttUtteranceId = "STT-UTTERANCE-ID", Must, Internal,
        "Utterance ids are 1 or more, and each new utterance's id is greater than every earlier one's.";
    SttUtteranceClosed = "STT-UTTERANCE-CLOSED", Must, Internal,
        "No event follows the final of its utterance: exactly one final per utterance.";
    SttUtteranceOverlap = "STT-UTTERANCE-OVERLAP", Must, Internal,
        "A new utterance begins only after the open one's final: utterances do not interleave.";
    SttOffsets = "STT-OFFSETS", Must, Internal,
        "An event's offsets satisfy 0 <= start_ms <= end_ms.";
    SttFinalMissing = "STT-FINAL-MISSING", Must, Internal,
        "A Recognize stream does not end while an utterance is open: every utterance gets its final.";
    SttEndFinal = "STT-END-FINAL", Must, Internal,
        "After the client's end of audio the server sends a final (empty text when no speech was pending), then ends the stream.";

    // Health and load, both services.
    HealthServices = "HEALTH-SERVICES", Must, Ok,
        "grpc.health.v1 Check answers for the empty service name and for each served service name.";
    HealthReady = "HEALTH-READY", Must, Ok,
        "A worker reports NOT_SERVING until its model is loaded and warmed up, and SERVING after.";
    HealthWatch = "HEALTH-WATCH", Must, Ok,
        "grpc.health.v1 Watch sends the current status at once and every change after it.";
    HealthDrain = "HEALTH-DRAIN", Should, Unavailable,
        "On drain a server reports NOT_SERVING, refuses new sessions with UNAVAILABLE, and finishes what is in flight within its bound.";
    HealthGate = "HEALTH-GATE", Should, Unavailable,
        "While NOT_SERVING, a server accepts no new dispatchable work (UNAVAILABLE).";
    CapsMetrics = "CAPS-METRICS", Should, Ok,
        "GetCapabilities reports live load under the well-known metrics keys, and max_concurrent_sessions is the limit actually enforced.";
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// A broken rule, with what was seen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{rule} ({level}): {detail}", level = rule.level())]
pub struct Violation {
    pub rule: Rule,
    pub detail: String,
}

impl Violation {
    pub fn new(rule: Rule, detail: impl Into<String>) -> Self {
        Violation {
            rule,
            detail: detail.into(),
        }
    }

    /// The status to answer with, its message naming the rule.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.rule.code(), self.to_string())
    }
}

impl From<Violation> for tonic::Status {
    fn from(violation: Violation) -> Self {
        violation.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_round_trip() {
        let mut seen = HashSet::new();
        for rule in Rule::ALL {
            assert!(seen.insert(rule.id()), "duplicate id {}", rule.id());
            assert_eq!(Rule::from_id(rule.id()), Some(*rule));
        }
    }

    #[test]
    fn violation_status_names_the_rule() {
        let status = Violation::new(Rule::SessionIdInvalid, "empty").to_status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("SESSION-ID-INVALID"));
    }
}
