//! The TTS worker's integration tests as one test binary (each file was once
//! its own, each linking tonic and the Piper engine again). One module per
//! former file; `common` is the fixture they share.
//!
//! Every test first passes [`GATE`] under its module's name: tests of one
//! module overlap only each other, never a test of another module, as when
//! each file was a binary of its own and cargo ran them one after another
//! (so no time bound is held beside work it never had beside it).

use voxwire_testkit::gate::Gate;

static GATE: Gate = Gate::new();

mod common;

mod hostile_input;
mod piper_service;
mod queue_accounting;
mod tone_service;
