//! The tone engine: deterministic, fast and model-free, for tests,
//! conformance runs and load benchmarks. Its audio is derived from the text
//! (each character a short tone whose pitch follows the character), so
//! different texts give different audio and the same text the same bytes.
//! It is never the default and says so in ListModels.

use std::collections::BTreeMap;

use crate::voice::{EngineError, Voice, VoiceInfo};

/// Output rate: the wire's default, so no resampling is needed.
const SAMPLE_RATE: u32 = 48_000;
/// Audio per character.
const CHAR_MS: u32 = 30;
/// Fade at each tone's edges, against clicks.
const FADE_SAMPLES: usize = 96;

pub struct ToneVoice {
    info: VoiceInfo,
}

impl ToneVoice {
    pub fn new(model_id: &str) -> Self {
        let metadata = BTreeMap::from([
            ("engine".to_string(), "tone".to_string()),
            (
                "note".to_string(),
                "test engine: tones derived from the text, not speech".to_string(),
            ),
        ]);
        ToneVoice {
            info: VoiceInfo {
                model_id: model_id.to_string(),
                family: "tone (test engine, not speech)".to_string(),
                languages: vec!["und".to_string()],
                sample_rate: SAMPLE_RATE,
                metadata,
            },
        }
    }
}

impl Voice for ToneVoice {
    fn info(&self) -> &VoiceInfo {
        &self.info
    }

    fn synthesize(&self, sentence: &str) -> Result<Vec<f32>, EngineError> {
        let per_char = (SAMPLE_RATE * CHAR_MS / 1000) as usize;
        let mut out = Vec::with_capacity(sentence.chars().count() * per_char);
        for c in sentence.chars() {
            if c.is_whitespace() {
                out.extend(std::iter::repeat_n(0.0, per_char));
                continue;
            }
            let hz = 200.0 + 20.0 * (u32::from(c) % 40) as f32;
            for i in 0..per_char {
                let t = i as f32 / SAMPLE_RATE as f32;
                let edge = i.min(per_char - 1 - i);
                let envelope = (edge as f32 / FADE_SAMPLES as f32).min(1.0);
                out.push(0.3 * envelope * (2.0 * std::f32::consts::PI * hz * t).sin());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_same_audio_other_text_other_audio() {
        let voice = ToneVoice::new("tone");
        let a = voice.synthesize("abc").expect("tone");
        assert_eq!(a, voice.synthesize("abc").expect("tone"));
        assert_ne!(a, voice.synthesize("abd").expect("tone"));
        assert_eq!(a.len(), 3 * 1440);
        assert!(a.iter().all(|s| s.abs() <= 0.3));
    }
}
