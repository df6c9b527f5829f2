//! The proto crate's integration tests as one test binary, one module per
//! former file.

mod protocol_doc;
mod stream_rules;
