//! The `.onnx.json` that ships beside every Piper voice.

use std::collections::HashMap;

use serde::Deserialize;

use crate::{PiperError, Scales};

#[derive(Deserialize)]
struct RawConfig {
    audio: RawAudio,
    espeak: Option<RawEspeak>,
    inference: Option<RawInference>,
    phoneme_type: Option<String>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
    #[serde(default)]
    phoneme_map: HashMap<String, Vec<String>>,
    num_speakers: Option<u32>,
    #[serde(default)]
    speaker_id_map: HashMap<String, i64>,
}

#[derive(Deserialize)]
struct RawAudio {
    sample_rate: u32,
}

#[derive(Deserialize)]
struct RawEspeak {
    voice: String,
}

#[derive(Deserialize)]
struct RawInference {
    noise_scale: Option<f32>,
    length_scale: Option<f32>,
    noise_w: Option<f32>,
}

/// A voice's settings from its `.onnx.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceConfig {
    /// Output sample rate in Hz (22050 for medium voices).
    pub sample_rate: u32,
    /// espeak-ng voice used to phonemize, e.g. `en-us`.
    pub espeak_voice: String,
    /// The voice's recommended scales.
    pub default_scales: Scales,
    /// `espeak` for every voice this crate can phonemize for.
    pub phoneme_type: String,
    /// Single phoneme (one Unicode scalar) to model input ids.
    pub phoneme_id_map: HashMap<char, Vec<i64>>,
    /// Phoneme substitutions applied before id lookup.
    pub phoneme_map: HashMap<char, Vec<char>>,
    pub num_speakers: u32,
    pub speaker_id_map: HashMap<String, i64>,
}

fn single_char(s: &str) -> Option<char> {
    let mut it = s.chars();
    let c = it.next()?;
    it.next().is_none().then_some(c)
}

impl VoiceConfig {
    pub fn from_json(json: &str) -> Result<Self, PiperError> {
        let raw: RawConfig =
            serde_json::from_str(json).map_err(|e| PiperError::Config(e.to_string()))?;
        let defaults = Scales::PIPER_DEFAULT;
        let inference = raw.inference.as_ref();
        let default_scales = Scales {
            noise_scale: inference
                .and_then(|i| i.noise_scale)
                .unwrap_or(defaults.noise_scale),
            length_scale: inference
                .and_then(|i| i.length_scale)
                .unwrap_or(defaults.length_scale),
            noise_w: inference
                .and_then(|i| i.noise_w)
                .unwrap_or(defaults.noise_w),
        };
        let mut phoneme_id_map = HashMap::new();
        for (k, v) in raw.phoneme_id_map {
            let c = single_char(&k).ok_or_else(|| {
                PiperError::Config(format!("phoneme_id_map key {k:?} is not one character"))
            })?;
            phoneme_id_map.insert(c, v);
        }
        let mut phoneme_map = HashMap::new();
        for (k, v) in raw.phoneme_map {
            let c = single_char(&k).ok_or_else(|| {
                PiperError::Config(format!("phoneme_map key {k:?} is not one character"))
            })?;
            let to = v.iter().flat_map(|s| s.chars()).collect();
            phoneme_map.insert(c, to);
        }
        for required in ['^', '_', '$'] {
            if !phoneme_id_map.contains_key(&required) {
                return Err(PiperError::Config(format!(
                    "phoneme_id_map lacks {required:?}"
                )));
            }
        }
        Ok(Self {
            sample_rate: raw.audio.sample_rate,
            espeak_voice: raw
                .espeak
                .map(|e| e.voice)
                .unwrap_or_else(|| "en-us".to_string()),
            default_scales,
            phoneme_type: raw.phoneme_type.unwrap_or_else(|| "espeak".to_string()),
            phoneme_id_map,
            phoneme_map,
            num_speakers: raw.num_speakers.unwrap_or(1),
            speaker_id_map: raw.speaker_id_map,
        })
    }
}
