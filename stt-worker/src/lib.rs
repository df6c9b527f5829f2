//! The voxwire STT worker: `stt.STTService` over Whisper run on candle
//! (voxwire-whisper), with voice-activity endpointing.
//!
//! - [`service`]: Recognize streams (requests checked by the proto crate's
//!   request validator, events by its stream validator), capacity, load;
//! - [`server`]: flags, start-up (NOT_SERVING until the model is loaded and one
//!   warm-up decode ran), drain.
#![forbid(unsafe_code)]

pub mod server;
pub mod service;
