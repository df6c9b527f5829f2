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
    // `cargo test` runs this process with the variables of the package under
    // test (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, OUT_DIR, ...). ring's build
    // script reruns when those change, so a nested cargo that inherited them
    // rebuilt ring and all above it, and the next plain `cargo build` rebuilt
    // it back. The nested build gets the environment cargo itself was given.
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(set_by_cargo_for_the_package) {
            command.env_remove(key);
        }
    }
    let output = command
        .output()
        .map_err(|e| format!("running cargo: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Variables cargo sets for a package's build script, test or binary, as
/// opposed to the ones a user sets for cargo (CARGO_HOME, CARGO_TARGET_DIR,
/// CARGO_INCREMENTAL, ...).
fn set_by_cargo_for_the_package(key: &str) -> bool {
    matches!(
        key,
        "OUT_DIR" | "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
    ) || ["CARGO_PKG_", "CARGO_MANIFEST_", "CARGO_BIN_"]
        .iter()
        .any(|prefix| key.starts_with(prefix))
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

#[cfg(test)]
mod tests {
    use super::set_by_cargo_for_the_package;

    #[test]
    fn the_nested_build_drops_package_variables_and_keeps_the_users() {
        for key in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_BIN_EXE_voxsoak",
            "CARGO_CRATE_NAME",
            "OUT_DIR",
        ] {
            assert!(set_by_cargo_for_the_package(key), "{key} kept");
        }
        for key in [
            "CARGO_HOME",
            "CARGO_TARGET_DIR",
            "CARGO_INCREMENTAL",
            "CARGO",
            "PATH",
        ] {
            assert!(!set_by_cargo_for_the_package(key), "{key} dropped");
        }
    }
}
