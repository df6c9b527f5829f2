//! What an STT worker (and the orchestrator's Transcribe) decodes from a
//! client: a Recognize stream of RecognizeRequests through
//! SttRequestValidator (config first, sample rates, chunk sizes, odd byte
//! counts, stream length, nothing after the end; the model and language
//! checked against an offer); and a stream of
//! TranscriptEvents through SttStreamValidator. No input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use voxwire_proto::stt::{RecognizeRequest, TranscriptEvent};
use voxwire_proto::stt_stream::{
    check_choice, SttInput, SttLimits, SttOffer, SttRequestValidator, SttStreamValidator,
};

mod common;

fuzz_target!(|data: &[u8]| {
    let (selector, data) = match data.split_first() {
        Some(split) => split,
        None => return,
    };
    if selector % 2 == 0 {
        // Small limits so the length rules are reached by short inputs too.
        let mut validator = SttRequestValidator::new(SttLimits {
            max_chunk_bytes: 64,
            max_stream_seconds: 1,
        });
        let offer = (vec!["whisper".to_string()], vec!["en".to_string()]);
        for piece in common::pieces(data) {
            let Ok(request) = RecognizeRequest::decode(piece) else {
                continue;
            };
            match validator.accept(&request) {
                Err(_) => return,
                // The model and language the config asks for, against a
                // fixed offer: any tag, however malformed, is an answer.
                Ok(SttInput::Config(config)) => {
                    let _ = check_choice(
                        config,
                        SttOffer {
                            models: &offer.0,
                            languages: &offer.1,
                        },
                    );
                }
                Ok(SttInput::Audio { .. }) => {}
            }
            assert!(validator.audio_seconds() <= 1.0 + 1e-9);
        }
        let _ = validator.half_closed();
    } else {
        let mut validator = SttStreamValidator::new("fuzz", selector % 4 == 1);
        for (i, piece) in common::pieces(data).enumerate() {
            if i == 3 {
                validator.end_of_audio();
            }
            let Ok(event) = TranscriptEvent::decode(piece) else {
                continue;
            };
            if validator.observe(&event).is_err() {
                return;
            }
        }
        let _ = validator.finish();
    }
});
