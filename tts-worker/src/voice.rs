//! What the service asks of a synthesis engine: the [`Voice`] trait, what a
//! voice reports about itself and how it fails. A leaf: the engines and the
//! catalogue both depend on it, it on neither.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

/// What a voice tells ListModels.
#[derive(Debug, Clone)]
pub struct VoiceInfo {
    pub model_id: String,
    pub family: String,
    pub languages: Vec<String>,
    /// The rate `synthesize` returns audio at.
    pub sample_rate: u32,
    /// Free-form facts for ListModels' metadata (engine, path...).
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("voice {0:?} is not in this worker's catalogue")]
    UnknownModel(String),
    #[error("cannot load voice {model_id:?}: {reason}")]
    Load { model_id: String, reason: String },
    #[error("synthesis failed: {0}")]
    Synthesis(String),
}

/// A loaded voice. Synthesis is blocking and CPU-bound: callers run it off
/// the async runtime.
pub trait Voice: Send + Sync + 'static {
    fn info(&self) -> &VoiceInfo;
    /// Mono f32 audio in [-1, 1] for one sentence, at `info().sample_rate`.
    fn synthesize(&self, sentence: &str) -> Result<Vec<f32>, EngineError>;

    /// [`Voice::synthesize`] in pieces: each piece goes to `emit` as soon as
    /// it is ready, in order, so the first audio can leave before the
    /// sentence is done. `emit` returning `Break` (nobody listens any more)
    /// ends the work early. By default the sentence is one piece.
    fn synthesize_streaming(
        &self,
        sentence: &str,
        emit: &mut dyn FnMut(Vec<f32>) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        let _ = emit(self.synthesize(sentence)?);
        Ok(())
    }
}
