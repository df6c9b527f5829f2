//! The crate-level dependency rules of docs/architecture.md ("Dependency
//! rules"), checked against every manifest: which workspace crates each
//! crate may have in `[dependencies]` (dev-dependencies are the tests'
//! business and not checked).

use std::collections::BTreeSet;
use std::path::Path;

/// Workspace crates in a manifest's `[dependencies]` table.
fn workspace_dependencies(manifest: &str) -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(manifest);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} is readable: {e}", path.display()));
    let mut in_dependencies = false;
    let mut found = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line == "[dependencies]";
            continue;
        }
        let name = line.split(['=', '.']).next().unwrap_or_default().trim();
        if in_dependencies && (name.starts_with("voxwire-") || name == "voxctl") {
            found.insert(name.to_string());
        }
    }
    found
}

#[test]
fn every_crate_depends_only_on_what_the_rules_allow() {
    let rules: &[(&str, &[&str])] = &[
        ("proto/Cargo.toml", &[]),
        ("service/Cargo.toml", &["voxwire-proto"]),
        ("dsp/Cargo.toml", &[]),
        ("testkit/Cargo.toml", &[]),
        ("engines/piper/Cargo.toml", &[]),
        ("engines/whisper/Cargo.toml", &["voxwire-dsp"]),
        (
            "tts-worker/Cargo.toml",
            &[
                "voxwire-proto",
                "voxwire-service",
                "voxwire-dsp",
                "voxwire-piper",
            ],
        ),
        (
            "stt-worker/Cargo.toml",
            &[
                "voxwire-proto",
                "voxwire-service",
                "voxwire-dsp",
                "voxwire-whisper",
            ],
        ),
        (
            "orchestrator/Cargo.toml",
            &["voxwire-proto", "voxwire-service", "voxwire-dsp"],
        ),
        (
            "conformance/Cargo.toml",
            &["voxwire-proto", "voxwire-service"],
        ),
        ("voxctl/Cargo.toml", &["voxwire-proto", "voxwire-service"]),
        (
            "reliability/Cargo.toml",
            &[
                "voxwire-proto",
                "voxwire-service",
                "voxwire-testkit",
                "voxctl",
            ],
        ),
        (
            "bench/Cargo.toml",
            &[
                "voxwire-proto",
                "voxwire-dsp",
                "voxwire-testkit",
                "voxwire-reliability",
            ],
        ),
    ];
    let mut broken = Vec::new();
    for (manifest, allowed) in rules {
        let allowed: BTreeSet<String> = allowed.iter().map(|s| s.to_string()).collect();
        let extra: Vec<String> = workspace_dependencies(manifest)
            .difference(&allowed)
            .cloned()
            .collect();
        if !extra.is_empty() {
            broken.push(format!("{manifest}: {extra:?}"));
        }
    }
    assert!(
        broken.is_empty(),
        "dependencies the rules of docs/architecture.md do not allow \
         (change the rule there and here, or the manifest): {broken:?}"
    );
}

#[test]
fn the_manifest_reader_sees_dependencies_and_only_those() {
    // The reader itself, on a manifest known to have workspace crates in
    // [dependencies] and others only in [dev-dependencies].
    let found = workspace_dependencies("orchestrator/Cargo.toml");
    assert!(found.contains("voxwire-proto"), "{found:?}");
    assert!(!found.contains("voxwire-tts-worker"), "{found:?}");
}
