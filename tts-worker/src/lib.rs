//! The voxwire TTS worker: `tts.TTSService` over a Piper voice run on candle
//! (or the deterministic tone engine for tests and load runs).
//!
//! - [`text`]: sentences out of streaming text;
//! - [`engine`]: the [`engine::Voice`] trait and the catalogue of voices;
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
