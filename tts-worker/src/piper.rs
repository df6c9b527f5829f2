//! The Piper voice (voxwire-piper: VITS on candle, espeak-ng phonemes)
//! behind the [`Voice`] trait.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use voxwire_piper::{PiperVoice, Scales};

use crate::engine::{EngineError, Voice, VoiceInfo};

struct PiperAdapter {
    voice: PiperVoice,
    scales: Scales,
    info: VoiceInfo,
}

/// Loads a Piper voice (blocking: reads and prepares the weights).
pub fn load(model_id: &str, path: &Path) -> Result<Arc<dyn Voice>, EngineError> {
    let voice = PiperVoice::load(path).map_err(|e| EngineError::Load {
        model_id: model_id.to_string(),
        reason: e.to_string(),
    })?;
    let config = voice.config();
    let language = config.espeak_voice.clone();
    let metadata = BTreeMap::from([
        ("engine".to_string(), "piper".to_string()),
        ("runtime".to_string(), "candle".to_string()),
        ("path".to_string(), path.display().to_string()),
        (
            "native_sample_rate".to_string(),
            config.sample_rate.to_string(),
        ),
        ("speakers".to_string(), config.num_speakers.to_string()),
    ]);
    let info = VoiceInfo {
        model_id: model_id.to_string(),
        family: "piper".to_string(),
        languages: vec![language],
        sample_rate: config.sample_rate,
        metadata,
    };
    Ok(Arc::new(PiperAdapter {
        scales: Scales::from_config(config),
        voice,
        info,
    }))
}

impl Voice for PiperAdapter {
    fn info(&self) -> &VoiceInfo {
        &self.info
    }

    fn synthesize(&self, sentence: &str) -> Result<Vec<f32>, EngineError> {
        // The noise is seeded by the text, so the same sentence sounds the
        // same every time (reproducible runs and regression hashes) while
        // keeping the voice's natural default scales.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        sentence.hash(&mut hasher);
        self.voice
            .synthesize_sentence(sentence, self.scales, hasher.finish())
            .map_err(|e| EngineError::Synthesis(e.to_string()))
    }
}
