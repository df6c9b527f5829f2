//! Well-known keys of `GetCapabilitiesResponse.metrics`, so an orchestrator can
//! choose workers by load. A worker reports the keys it knows; an orchestrator
//! treats a missing key as unknown, never as zero load.

/// Sessions open now.
pub const ACTIVE_SESSIONS: &str = "active_sessions";
/// Streaming calls (Synthesize / Recognize) in flight now.
pub const ACTIVE_STREAMS: &str = "active_streams";
/// Requests waiting for an inference slot.
pub const QUEUED_REQUESTS: &str = "queued_requests";
/// The session limit actually enforced (mirrors Capabilities.max_concurrent_sessions).
pub const MAX_SESSIONS: &str = "max_sessions";
/// Recent processing time divided by audio time (below 1 is faster than real time).
pub const REAL_TIME_FACTOR: &str = "real_time_factor";
/// Overall load in [0, 1]: the worker's own judgement of how busy it is.
pub const LOAD: &str = "load";
/// Longest text a Synthesize call may carry, in characters (TTS-TEXT-LIMIT).
pub const MAX_TEXT_CHARS: &str = "max_text_chars";
/// Largest STT audio chunk, in bytes (STT-CHUNK-LIMIT).
pub const MAX_CHUNK_BYTES: &str = "max_chunk_bytes";
/// Longest STT stream, in seconds of audio (STT-DURATION-LIMIT).
pub const MAX_STREAM_SECONDS: &str = "max_stream_seconds";

/// A key's meaning in one line, for the `# HELP` of the gauge a worker
/// exports it as; `None` for a key that is not well-known.
pub fn help(key: &str) -> Option<&'static str> {
    Some(match key {
        ACTIVE_SESSIONS => "Sessions open now.",
        ACTIVE_STREAMS => "Streaming calls (Synthesize / Recognize) in flight now.",
        QUEUED_REQUESTS => "Requests waiting for an inference slot.",
        MAX_SESSIONS => "The session limit enforced.",
        REAL_TIME_FACTOR => {
            "Recent processing time divided by audio time (below 1: faster than real time)."
        }
        LOAD => "Overall load in [0, 1], the worker's own judgement.",
        MAX_TEXT_CHARS => "Longest text a Synthesize call may carry, in characters.",
        MAX_CHUNK_BYTES => "Largest STT audio chunk, in bytes.",
        MAX_STREAM_SECONDS => "Longest STT stream, in seconds of audio.",
        _ => return None,
    })
}

/// Every well-known key, for documentation and conformance checks.
pub const ALL: &[&str] = &[
    ACTIVE_SESSIONS,
    ACTIVE_STREAMS,
    QUEUED_REQUESTS,
    MAX_SESSIONS,
    REAL_TIME_FACTOR,
    LOAD,
    MAX_TEXT_CHARS,
    MAX_CHUNK_BYTES,
    MAX_STREAM_SECONDS,
];
