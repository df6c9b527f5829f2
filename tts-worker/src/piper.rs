//! The Piper voice (voxwire-piper: VITS on candle, espeak-ng phonemes)
//! behind the [`Voice`] trait.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use voxwire_piper::{DecodeWindows, PiperVoice, Scales};

use crate::voice::{EngineError, Voice, VoiceInfo};

struct PiperAdapter {
    voice: PiperVoice,
    scales: Scales,
    windows: DecodeWindows,
    info: VoiceInfo,
}

/// Loads a Piper voice (blocking: reads and prepares the weights).
pub fn load(
    model_id: &str,
    path: &Path,
    windows: DecodeWindows,
) -> Result<Arc<dyn Voice>, EngineError> {
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
        ("decode_window".to_string(), windows.to_string()),
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
        windows,
        voice,
        info,
    }))
}

impl Voice for PiperAdapter {
    fn info(&self) -> &VoiceInfo {
        &self.info
    }

    fn synthesize(&self, sentence: &str) -> Result<Vec<f32>, EngineError> {
        self.voice
            .synthesize_sentence(sentence, self.scales, seed_of(sentence))
            .map_err(|e| EngineError::Synthesis(e.to_string()))
    }

    fn synthesize_streaming(
        &self,
        sentence: &str,
        emit: &mut dyn FnMut(Vec<f32>) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        self.voice
            .synthesize_sentence_chunked(
                sentence,
                self.scales,
                seed_of(sentence),
                self.windows,
                emit,
            )
            .map(|_| ())
            .map_err(|e| EngineError::Synthesis(e.to_string()))
    }
}

/// The noise is seeded by the text, so the same sentence sounds the same
/// every time (reproducible runs and regression hashes) while keeping the
/// voice's natural default scales.
fn seed_of(sentence: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    sentence.hash(&mut hasher);
    hasher.finish()
}
