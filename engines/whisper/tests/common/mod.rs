//! Real speech for the tests, spoken at test time by espeak-ng or by the
//! project's own Piper voice.
#![allow(dead_code)]

use voxwire_whisper::{RecognizerEvent, WhisperModel, SAMPLE_RATE};

/// The model, or `None` when the test should skip (outside CI only).
pub fn model() -> Option<WhisperModel> {
    let dir = voxwire_testkit::model_dir(voxwire_testkit::WHISPER_TINY_EN)?;
    match WhisperModel::load(&dir) {
        Ok(model) => Some(model),
        Err(e) => panic!("loading {}: {e}", dir.display()),
    }
}

/// `text` spoken by espeak-ng (en-us, 160 words per minute) as 16 kHz f32.
/// `None` when espeak-ng is missing outside CI; in CI that is a failure.
pub fn speak(text: &str) -> Option<Vec<f32>> {
    let (samples, rate) = voxwire_testkit::speech::espeak(text)?;
    let samples = voxwire_dsp::i16_to_f32(&samples);
    Some(voxwire_dsp::resample(&samples, rate, SAMPLE_RATE).expect("resampling"))
}

/// `text` spoken by the project's Piper voice (en_US-joe-medium, its default
/// scales) as 16 kHz f32, sentence after sentence. `None` when the voice is
/// missing outside CI; in CI that is a failure.
pub fn speak_piper(text: &str) -> Option<Vec<f32>> {
    let dir = voxwire_testkit::model_dir(voxwire_testkit::PIPER_JOE_MEDIUM)?;
    let voice = voxwire_piper::PiperVoice::load(&dir).expect("the Piper voice loads");
    let scales = voxwire_piper::Scales::from_config(voice.config());
    let pcm = voice
        .synthesize_sentence(text, scales, 0)
        .expect("Piper speaks");
    Some(voxwire_dsp::resample(&pcm, voice.config().sample_rate, SAMPLE_RATE).expect("resampling"))
}

pub fn silence(ms: u32) -> Vec<f32> {
    vec![0.0; (SAMPLE_RATE / 1000 * ms) as usize]
}

/// Maps engine events to the protocol's and checks every rule, including the
/// final owed after the end of audio.
pub fn validate(streamed: &[RecognizerEvent], after_end: &[RecognizerEvent], partials: bool) {
    use voxwire_proto::stt::TranscriptEvent;
    use voxwire_proto::stt_stream::SttStreamValidator;
    let mut validator = SttStreamValidator::new("test-session", partials);
    let mut sequence = 0i64;
    let mut to_proto = |e: &RecognizerEvent| {
        sequence += 1;
        TranscriptEvent {
            session_id: "test-session".into(),
            utterance_id: e.utterance_id,
            is_final: e.is_final,
            sequence_number: sequence,
            text: e.text.clone(),
            start_ms: e.start_ms,
            end_ms: e.end_ms,
            confidence: e.confidence,
        }
    };
    for event in streamed {
        let proto = to_proto(event);
        if let Err(v) = validator.observe(&proto) {
            panic!("{event:?} breaks the rules: {v:?}");
        }
    }
    validator.end_of_audio();
    for event in after_end {
        let proto = to_proto(event);
        if let Err(v) = validator.observe(&proto) {
            panic!("{event:?} after the end of audio breaks the rules: {v:?}");
        }
    }
    if let Err(v) = validator.finish() {
        panic!("the stream ended badly: {v:?}");
    }
}
