//! Streaming speech recognition: OpenAI Whisper run on candle, with
//! voice-activity endpointing.
//!
//! [`WhisperModel`] loads a Whisper checkpoint in Hugging Face layout once and
//! transcribes whole clips of any length ([`WhisperModel::transcribe`]).
//! [`Recognizer`] wraps one model for one audio stream: it cuts the stream into
//! utterances with an energy-based voice-activity detector and emits partial
//! and final [`RecognizerEvent`]s that follow the project's STT stream rules.
#![forbid(unsafe_code)]

mod decoder;
mod error;
mod loops;
mod mel;
mod model;
mod recognizer;
mod timestamps;
mod vad;

pub use error::WhisperError;
pub use model::{AudioContext, TranscriptSegment, Transcription, WhisperModel};
pub use recognizer::{EndpointConfig, Recognizer, RecognizerEvent};

/// The only sample rate the engine takes: mono f32 PCM at 16 kHz, in -1..1.
pub const SAMPLE_RATE: u32 = 16_000;
