//! The orchestrator's integration tests as one test binary (each file was
//! once its own, each linking tonic, the workers and their engines again).
//! One module per former file; `common` (fixtures) and `webdriver` are
//! shared.
//!
//! Two files stay apart, each the only test of its process: `security.rs`
//! captures every log line of the process through its own global
//! subscriber, and `otlp_export.rs` sets the OTLP endpoint in the
//! environment and needs its subscriber to be the process's first.
//!
//! Every test first passes [`GATE`] under its module's name: tests of one
//! module overlap only each other, never a test of another module, as when
//! each file was a binary of its own and cargo ran them one after another
//! (so no time bound is held beside work it never had beside it).

use voxwire_testkit::gate::Gate;

static GATE: Gate = Gate::new();

mod common;
mod webdriver;

mod browser;
mod console_ws;
mod converse_stt;
mod frozen_workers;
mod hostile_clients;
mod hostile_input;
mod openai;
mod openai_sdk;
mod otlp_off;
mod real_voice;
mod tts_turns;
