//! What an orchestrator or a client decodes from a TTS worker: a stream of
//! AudioFrames through the frame classifier and TtsStreamValidator (frame
//! size, sample rates, sequence numbers, exactly one final). No input may
//! panic, and a stream the validator accepted as finished stays finished.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use voxwire_proto::tts::AudioFrame;
use voxwire_proto::tts_stream::{classify, TtsStreamValidator};

mod common;

fuzz_target!(|data: &[u8]| {
    let mut validator: Option<TtsStreamValidator> = None;
    for piece in common::pieces(data) {
        let Ok(frame) = AudioFrame::decode(piece) else {
            continue;
        };
        let _ = classify(&frame);
        let validator =
            validator.get_or_insert_with(|| TtsStreamValidator::new(frame.session_id.clone()));
        match validator.observe(&frame) {
            Ok(kind) => {
                if kind.is_final() {
                    assert!(validator.is_finished());
                    assert!(validator.finish().is_ok());
                }
            }
            Err(_) => return,
        }
    }
    if let Some(validator) = validator {
        let _ = validator.finish();
    }
});
