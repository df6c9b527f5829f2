# voxwire tasks. `just --list` shows them. Models come from VOXWIRE_MODEL_DIR
# (default: ../shared/models beside the checkout).

set shell := ["bash", "-euo", "pipefail", "-c"]

export VOXWIRE_MODEL_DIR := env_var_or_default("VOXWIRE_MODEL_DIR", justfile_directory() / ".." / "shared" / "models")

# The whole test suite (real models included; CI=true makes a missing model fail).
test:
    cargo test --workspace --no-fail-fast

# Formatting and lints as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Start the stack on loopback (real voice, real Whisper) and make a round trip through the orchestrator.
demo:
    scripts/demo.sh

# Check a running worker against the protocol: just conformance 127.0.0.1:50061 tts
conformance TARGET KIND="tts":
    cargo run --quiet -p voxwire-conformance -- {{KIND}} --target {{TARGET}}

# Re-record the protocol regression goldens (conformance/goldens/) after an intentional protocol change;
# review the diff. `cargo test` compares against them.
regress:
    VOXWIRE_REGRESS_UPDATE=1 cargo test -p voxwire-conformance --test it -- regress::tone_worker_matches_the_golden

# Benchmarks (docs/benchmarks.md), release build, under 15 minutes: the engine examples (Piper real-time factor at 1 and
# 2 threads, Whisper WER / RTF / end-of-utterance latency on espeak-ng and Piper speech), then voxbench (relay overhead
# vs direct at 1 to 2,000 sessions, throughput vs a bare relay, first audio with the real voice, barge-in), which reads
# the engines' JSON into target/bench/summary.{json,md} and draws target/bench/latency.png.
bench:
    cargo build --release --bin voxbench --bin tts-worker --bin stt-worker --bin orchestrator
    RAYON_NUM_THREADS=1 cargo run --release -p voxwire-piper --example piper_rtf
    cp "${CARGO_TARGET_DIR:-target}/bench/piper_rtf.json" "${CARGO_TARGET_DIR:-target}/bench/piper_rtf_1t.json"
    RAYON_NUM_THREADS=2 cargo run --release -p voxwire-piper --example piper_rtf
    cp "${CARGO_TARGET_DIR:-target}/bench/piper_rtf.json" "${CARGO_TARGET_DIR:-target}/bench/piper_rtf_2t.json"
    VOXWIRE_BENCH_VOICE=espeak cargo run --release -p voxwire-whisper --example stt_bench
    VOXWIRE_BENCH_VOICE=piper cargo run --release -p voxwire-whisper --example stt_bench
    "${CARGO_TARGET_DIR:-target}/release/voxbench"

# The short benchmark CI runs so it cannot rot (dev build, under 2 minutes): voxbench --quick.
bench-quick:
    cargo build --workspace --bins
    "${CARGO_TARGET_DIR:-target}/debug/voxbench" --quick

# A development CA with server and client certificates for TLS and mutual TLS (never for production):
# just certs [DIR]  (default deploy/certs, git-ignored). See docs/security.md.
certs DIR="deploy/certs":
    cargo run --quiet -p voxctl -- certs {{DIR}}

# Dependency checks: licences, banned crates, sources (deny.toml). Advisories need GitHub; run
# `cargo deny check advisories` where it is reachable.
deny:
    command -v cargo-deny >/dev/null || cargo install --locked cargo-deny
    cargo deny check licenses bans sources

# Every cargo-fuzz target for FUZZ_SECONDS (default 20) each; fails on a crash.
fuzz-smoke:
    scripts/fuzz-smoke.sh

# Offline Debian base, host-built binaries (VOXWIRE_PROFILE=dev|release); extra arguments go to
# `compose up -d` (just up --scale tts-worker=3).
# Start the compose stack (deploy/compose.yaml) and wait until every container is healthy.
up *ARGS:
    deploy/stack.sh up {{ARGS}}

# Stop and remove the compose stack's containers and network.
down:
    deploy/stack.sh down

# Health gating, conformance, round trip, scaling, a worker killed mid-session, clean down.
# The compose stack tested for real (docs/deploy.md).
compose-e2e:
    scripts/compose-e2e.sh

# Validate deploy/k8s/ offline against the Kubernetes schemas (kubernetes-validate from PyPI).
validate-k8s:
    scripts/validate-k8s.sh

# Load and soak (docs/operations.md): 1,000 concurrent sessions x 100 messages through the orchestrator to unpaced
# tone workers; zero failed turns, zero lost or reordered frames, orchestrator RSS at the end within 10% of after
# warm-up. Report in target/bench/soak.json. Options pass through, e.g. `just soak --sessions 100 --messages 10`.
soak *ARGS:
    cargo run -p voxwire-reliability --bin voxsoak -- {{ARGS}}
