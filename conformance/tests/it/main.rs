//! The conformance crate's integration tests as one test binary (each file
//! was once its own, each linking tonic and the workers again). One module
//! per former file; `support` is what they share.
//!
//! Every test first passes [`GATE`] under its module's name: tests of one
//! module overlap only each other, never a test of another module, as when
//! each file was a binary of its own and cargo ran them one after another
//! (so no time bound is held beside work it never had beside it).

use voxwire_testkit::gate::Gate;

static GATE: Gate = Gate::new();

mod support;

mod cli;
mod coverage;
mod regress;
mod stt_proof;
mod tts_proof;
