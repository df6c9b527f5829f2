//! The proto crate's integration tests as one test binary: one module per
//! former file, and `dependency_rules`, which holds the workspace's crates
//! to the dependency rules of docs/architecture.md (beside
//! `protocol_doc`, which holds docs/protocol.md to the rule catalogue).

mod dependency_rules;
mod protocol_doc;
mod stream_rules;
