//! The voxwire TTS worker: `tts.TTSService` over a Piper voice run on candle
//! (or the deterministic tone engine for tests and load runs).
//!
//! - [`text`]: sentences out of streaming text;
//! - [`voice`]: the [`voice::Voice`] trait every engine implements;
//! - [`engine`]: the catalogue of voices and loading one;
//! - [`tone`], [`piper`]: the two engines;
//! - [`service`]: sessions, streaming synthesis, control, models, load;
//! - [`server`]: flags, start-up (health NOT_SERVING until the voice is warm), drain.
#![forbid(unsafe_code)]

pub mod engine;
pub mod piper;
pub mod server;
pub mod service;
pub mod text;
pub mod tone;
pub mod voice;
