use std::path::PathBuf;

/// Everything that can go wrong loading a model or recognising audio.
#[derive(Debug, thiserror::Error)]
pub enum WhisperError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is malformed: {message}")]
    Format { path: PathBuf, message: String },
    #[error("cannot load the tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("the tokenizer has no special token {0}")]
    MissingToken(&'static str),
    #[error("cannot decode tokens to text: {0}")]
    Detokenize(String),
    #[error("model computation failed: {0}")]
    Model(#[from] candle_core::Error),
    #[error("audio sample {index} is not finite")]
    NonFiniteAudio { index: usize },
    #[error("the recognizer's stream already finished")]
    Finished,
}
