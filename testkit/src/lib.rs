//! Test support: where the real models are, and what a test does when they
//! are not there.
//!
//! A test that needs a real model calls [`model_dir`]. In CI (`CI=true`) a
//! missing model is a failure, loudly; elsewhere the test skips with a message
//! saying how to run it.
//!
//! And [`gate::Gate`], which keeps the former files of one gathered test
//! binary from running at the same time.
#![forbid(unsafe_code)]

pub mod gate;
pub mod speech;
pub mod wer;

use std::path::PathBuf;

/// The model folders the tests know, relative to `VOXWIRE_MODEL_DIR`.
pub const WHISPER_TINY_EN: &str = "whisper-tiny.en";
pub const PIPER_JOE_MEDIUM: &str = "piper-en_US-joe-medium";

/// Whether this run is CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `VOXWIRE_MODEL_DIR/<name>` when it exists. When it does not: panics in CI,
/// otherwise prints why the test is skipped and returns `None`.
pub fn model_dir(name: &str) -> Option<PathBuf> {
    let base = std::env::var_os("VOXWIRE_MODEL_DIR").map(PathBuf::from);
    let found = base.as_ref().map(|b| b.join(name)).filter(|p| p.is_dir());
    match found {
        Some(dir) => Some(dir),
        None => {
            let why = match &base {
                None => "VOXWIRE_MODEL_DIR is not set".to_string(),
                Some(b) => format!("{} does not exist", b.join(name).display()),
            };
            if in_ci() {
                panic!("model {name} is required in CI, but {why}");
            }
            eprintln!(
                "SKIPPED: model {name} not found ({why}); \
                 set VOXWIRE_MODEL_DIR to a directory like ../shared/models to run this test"
            );
            None
        }
    }
}
