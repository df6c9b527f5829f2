//! The reliability tests as one test binary (each file was once its own,
//! each linking the client stack and building the binaries again). One
//! module per former file.
//!
//! These tests start whole stacks of processes and hold them to time bounds,
//! so a former file never runs beside another: every test first passes
//! [`GATE`] under its module's name, and tests of one module overlap only
//! each other, as when each file was a binary of its own.

use voxwire_testkit::gate::Gate;

static GATE: Gate = Gate::new();

mod frozen;
mod load;
mod partition;
mod protocol_faults;
mod start_order;
mod worker_faults;
