//! The voxwire orchestrator: holds client sessions and dispatches each turn
//! to a TTS or STT worker chosen by health and load.
//!
//! - [`backoff`]: exponential backoff with jitter (reconnects, retries);
//! - [`config`]: flags and validated settings;
//! - [`discovery`]: static, `dns://` and registered (leased) endpoints;
//! - [`endpoint`]: one worker's channel, readiness (health Watch or
//!   GetCapabilities probes) and reported load;
//! - [`pool`]: membership and power-of-two-choices selection;
//! - [`retry`]: which status codes a turn may retry;
//! - [`tts_dispatch`], [`stt_dispatch`]: one turn against the pools;
//! - [`state`], [`sessions`]: the session state machine and table;
//! - [`api`], [`converse`], [`relay`]: the gRPC services;
//! - [`http`]: the side port; [`web`]: the web console on it;
//!   [`openai`]: the OpenAI-compatible audio API on it;
//!   [`server`]: start-up and drain;
//! - [`telemetry`]: logging and OTLP span export.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod auth;
pub mod backoff;
pub mod config;
pub mod converse;
pub mod discovery;
pub mod endpoint;
pub mod http;
pub mod metrics;
pub mod openai;
pub mod pool;
pub mod relay;
pub mod retry;
pub mod server;
pub mod sessions;
pub mod state;
pub mod stt_dispatch;
pub mod telemetry;
pub mod trace;
pub mod tts_dispatch;
pub mod web;
