//! The voxwire contract.
//!
//! Generated gRPC types for `tts.TTSService` (wire-compatible with the existing
//! Python fleet), `stt.STTService` and the orchestrator's `voxwire.v1` API, and
//! every protocol rule written once:
//!
//! - [`rules`]: the catalogue of rule IDs, levels and the status code each maps to;
//! - [`audio`]: the PCM frame format and its arithmetic;
//! - [`session`]: what a valid session id is;
//! - [`tts_stream`]: frame classification, the Synthesize stream validator and the
//!   framer workers use to produce valid frames;
//! - [`stt_stream`]: the Recognize request and transcript-event validators;
//! - [`metrics`]: the well-known load keys of `GetCapabilities`.
//!
//! Nothing else in the workspace re-implements a rule: workers validate what they
//! send, the orchestrator validates what it relays, the conformance suite
//! validates what it receives, all through this crate. docs/protocol.md is the
//! prose form; a test keeps the two lists of rule IDs equal.
#![forbid(unsafe_code)]

pub mod audio;
pub mod metrics;
pub mod rules;
pub mod session;
pub mod stt_stream;
pub mod tts_stream;

pub use rules::{Level, Rule, Violation};

/// Generated types of `tts.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod tts {
    tonic::include_proto!("tts");
}

/// Generated types of `stt.proto`.
#[allow(clippy::all, clippy::pedantic)]
pub mod stt {
    tonic::include_proto!("stt");
}

/// Generated types of `voxwire.proto` (package `voxwire.v1`).
pub mod voxwire {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("voxwire.v1");
    }
}

/// The encoded `FileDescriptorSet` of every voxwire .proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("voxwire_descriptor");

/// Fully-qualified service names, as used by `grpc.health.v1` and reflection.
pub mod service_names {
    pub const TTS: &str = "tts.TTSService";
    pub const STT: &str = "stt.STTService";
    pub const VOXWIRE: &str = "voxwire.v1.Voxwire";
    pub const REGISTRY: &str = "voxwire.v1.Registry";
}
