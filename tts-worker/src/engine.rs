//! The catalogue of voices a worker can load, and loading one from its
//! source (the trait itself lives in [`crate::voice`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use voxwire_piper::DecodeWindows;

pub use crate::voice::{EngineError, Voice, VoiceInfo};

/// Where a voice in the catalogue comes from.
#[derive(Debug, Clone)]
pub enum VoiceSource {
    /// The deterministic test engine.
    Tone,
    /// A Piper voice: the .onnx file (its .onnx.json beside it), decoded in
    /// these windows.
    Piper {
        path: PathBuf,
        windows: DecodeWindows,
    },
}

/// The voices this worker can load, by model id.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    sources: BTreeMap<String, VoiceSource>,
}

impl Catalogue {
    pub fn insert(&mut self, model_id: impl Into<String>, source: VoiceSource) {
        self.sources.insert(model_id.into(), source);
    }

    pub fn get(&self, model_id: &str) -> Option<&VoiceSource> {
        self.sources.get(model_id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.sources.keys().map(String::as_str)
    }

    /// Every Piper voice (`*.onnx` with its `.onnx.json`) directly in `dir`,
    /// keyed by file stem.
    pub fn add_piper_dir(&mut self, dir: &Path, windows: DecodeWindows) -> std::io::Result<usize> {
        let mut added = 0;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if let Some(id) = piper_voice_id(&path) {
                self.insert(id, VoiceSource::Piper { path, windows });
                added += 1;
            }
        }
        Ok(added)
    }
}

/// The model id of a Piper voice file: its stem, when the config is beside it.
pub fn piper_voice_id(path: &Path) -> Option<String> {
    let is_onnx = path.extension().is_some_and(|e| e == "onnx");
    let config = PathBuf::from(format!("{}.json", path.display()));
    if !is_onnx || !config.is_file() {
        return None;
    }
    path.file_stem()
        .and_then(|s| s.to_str())
        .map(str::to_string)
}

/// Loads a voice from its source. Blocking (reads and prepares weights).
pub fn load(model_id: &str, source: &VoiceSource) -> Result<Arc<dyn Voice>, EngineError> {
    match source {
        VoiceSource::Tone => Ok(Arc::new(crate::tone::ToneVoice::new(model_id))),
        VoiceSource::Piper { path, windows } => crate::piper::load(model_id, path, *windows),
    }
}
