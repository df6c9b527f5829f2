//! What a run points at: which service, and (when the suite started the
//! worker itself) how to drain it. A leaf: the catalogue, the runner and the
//! client the cases share all use these, and these use none of them.

use std::sync::Arc;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Tts,
    Stt,
}

impl Service {
    pub const fn as_str(self) -> &'static str {
        match self {
            Service::Tts => "tts",
            Service::Stt => "stt",
        }
    }

    /// The gRPC name, as health and reflection know it.
    pub const fn grpc_name(self) -> &'static str {
        match self {
            Service::Tts => voxwire_proto::service_names::TTS,
            Service::Stt => voxwire_proto::service_names::STT,
        }
    }
}

/// Starts the target's drain, as SIGTERM does. Only a suite that started the
/// worker itself can offer one; the drain cases skip without it.
#[derive(Clone)]
pub struct DrainTrigger(Arc<dyn Fn() + Send + Sync>);

impl DrainTrigger {
    pub fn new(trigger: impl Fn() + Send + Sync + 'static) -> DrainTrigger {
        DrainTrigger(Arc::new(trigger))
    }

    pub fn fire(&self) {
        (self.0)();
    }
}

impl std::fmt::Debug for DrainTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DrainTrigger")
    }
}
