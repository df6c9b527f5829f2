//! The voxwire protocol conformance suite: points at any TTS or STT worker and
//! reports, case by case, whether it follows the protocol.
//!
//! - [`catalogue`]: every case, with its stable id, level and the rule it checks;
//! - [`outcome`]: what a case returns (pass, fail with expected vs actual and a
//!   trace, skip), in the spirit of tonic's interop crate;
//! - [`runner`]: runs the selected cases against a target and builds a [`runner::Report`];
//! - [`report`]: the human report, JSON and JUnit XML;
//! - [`inputs`]: the proptest strategies the cases draw their inputs from;
//! - [`spawn`]: starting the worker under test and waiting for it on health Watch;
//! - [`regress`]: protocol regression goldens (recorded exchanges, compared);
//! - [`cli`]: the `conformance` command line.
//!
//! Frame and transcript rules are never re-implemented here: every stream goes
//! through the validators of `voxwire-proto`, and a case fails only when the
//! violation the validator reports is the rule the case is named after.
#![forbid(unsafe_code)]
// A `Failure` carries its evidence (trace, input, replay seed) and is built
// once per failing case: its size on the error path costs nothing worth a Box.
#![allow(clippy::result_large_err)]

pub mod catalogue;
pub mod cli;
mod client;
mod glob;
pub mod inputs;
pub mod outcome;
mod prop;
pub mod regress;
pub mod report;
pub mod runner;
pub mod spawn;
mod stt;
mod target;
mod tts;

pub use catalogue::{catalogue, CaseDef, CaseLevel, Service};
pub use glob::Glob;
pub use outcome::{Failure, Outcome, TraceEntry};
pub use runner::{Report, RunConfig};
