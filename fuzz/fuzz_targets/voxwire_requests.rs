//! What the orchestrator decodes from a client of voxwire.v1: SpeakRequest,
//! a Converse stream of ConverseRequests, RegisterRequest; session ids
//! through SESSION-ID-INVALID, Converse audio through the PCM decoder. No
//! input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use voxwire_proto::audio::{decode_pcm16, FrameFormat};
use voxwire_proto::session::validate_session_id;
use voxwire_proto::tts_stream::check_text_limit;
use voxwire_proto::voxwire::v1::{
    converse_request, ConverseRequest, RegisterRequest, SpeakRequest,
};

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = SpeakRequest::decode(data) {
        if !request.session_id.is_empty() {
            let _ = validate_session_id(&request.session_id);
        }
        let _ = check_text_limit(request.text.chars().count(), 20_000);
    }
    let _ = RegisterRequest::decode(data);
    for piece in common::pieces(data) {
        let Ok(request) = ConverseRequest::decode(piece) else {
            continue;
        };
        match request.request {
            Some(converse_request::Request::Config(config)) => {
                let _ = validate_session_id(&config.session_id);
                let _ = FrameFormat::new(config.input_sample_rate, 20);
            }
            Some(converse_request::Request::Audio(audio)) => {
                let samples = decode_pcm16(&audio);
                assert_eq!(samples.len(), audio.len() / 2);
            }
            _ => {}
        }
    }
});
