//! What a TTS worker decodes from a client: each tts.proto request message,
//! then a Synthesize stream of TextChunks through the chunk rules
//! (TTS-CHUNK-SESSION, TTS-TEXT-LIMIT) and every session id through
//! SESSION-ID-INVALID. No input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use voxwire_proto::session::validate_session_id;
use voxwire_proto::tts::{
    ControlRequest, EndSessionRequest, LoadModelRequest, StartSessionRequest, TextChunk,
    UnloadModelRequest,
};
use voxwire_proto::tts_stream::{check_chunk_session, check_text_limit};

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = StartSessionRequest::decode(data) {
        let _ = validate_session_id(&request.session_id);
    }
    if let Ok(request) = EndSessionRequest::decode(data) {
        let _ = validate_session_id(&request.session_id);
    }
    if let Ok(request) = ControlRequest::decode(data) {
        let _ = validate_session_id(&request.session_id);
    }
    let _ = LoadModelRequest::decode(data);
    let _ = UnloadModelRequest::decode(data);

    let mut session: Option<String> = None;
    let mut chars = 0usize;
    for piece in common::pieces(data) {
        let Ok(chunk) = TextChunk::decode(piece) else {
            continue;
        };
        if check_chunk_session(session.as_deref(), &chunk).is_err() {
            return;
        }
        if session.is_none() {
            if validate_session_id(&chunk.session_id).is_err() {
                return;
            }
            session = Some(chunk.session_id.clone());
        }
        chars = chars.saturating_add(chunk.text.chars().count());
        if check_text_limit(chars, 20_000).is_err() {
            return;
        }
        // Re-encoding what was decoded must give a message that decodes the same.
        let again = TextChunk::decode(chunk.encode_to_vec().as_slice()).expect("round trip");
        assert_eq!(again, chunk);
    }
});
