//! The binaries under test, from the workspace's target directory. They are
//! built once per test process (`cargo build`, a no-op when up to date) so a
//! test never runs a stale orchestrator; `VOXWIRE_RELIABILITY_NO_BUILD=1`
//! skips that and uses what is there.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use crate::{Error, Result};

/// The workspace root: this crate's parent directory.
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(PathBuf::from).unwrap_or(here)
}

/// `CARGO_TARGET_DIR`, or `target/` in the workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Where the harness writes service logs.
pub fn log_dir() -> PathBuf {
    target_dir().join("reliability")
}

fn build() -> std::result::Result<(), String> {
    if std::env::var("VOXWIRE_RELIABILITY_NO_BUILD").is_ok_and(|v| v == "1") {
        return Ok(());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        // The whole workspace, as every script builds it: a subset of packages
        // resolves other dependency features and compiles the graph again.
        .args(["build", "--workspace", "--bins"]);
    let output = command
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// The path of binary `name` (debug profile), built first if need be.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    BUILT.get_or_init(build).clone().map_err(Error::Build)?;
    let path = target_dir().join("debug").join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Build(format!("{} is missing", path.display())))
    }
}
