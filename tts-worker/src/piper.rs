//! The Piper voice (voxwire-piper, candle) behind the [`Voice`] trait.

use std::path::Path;
use std::sync::Arc;

use crate::engine::{EngineError, Voice};

pub fn load(model_id: &str, _path: &Path) -> Result<Arc<dyn Voice>, EngineError> {
    Err(EngineError::Load {
        model_id: model_id.to_string(),
        reason: "the piper engine is not linked into this build yet".to_string(),
    })
}
