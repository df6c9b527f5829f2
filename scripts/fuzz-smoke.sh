#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a short while (FUZZ_SECONDS, default
# 20) and fails on the first crash. cargo-fuzz needs nightly compiler flags;
# the toolchain here is stable, so RUSTC_BOOTSTRAP=1 unlocks them for this
# build only. Crashes land in fuzz/artifacts/TARGET/ with the command to replay.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-20}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz from crates.io"
    cargo install --locked cargo-fuzz
fi

cd fuzz
targets=$(cargo fuzz list)
# One build for all targets. The targets are safe Rust over safe Rust
# (unsafe_code is forbidden in voxwire-proto), so AddressSanitizer adds build
# time and little else; coverage-guided fuzzing with debug assertions
# (overflow checks) is what finds panics here.
cargo fuzz build --sanitizer none --debug-assertions
status=0
for target in $targets; do
    mkdir -p "corpus/$target"
    echo "fuzz-smoke: $target for ${seconds}s"
    if ! cargo fuzz run --sanitizer none --debug-assertions "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>"target/$target.log"; then
        echo "fuzz-smoke: $target FAILED"
        tail -40 "target/$target.log"
        status=1
    else
        grep -E "^(stat::number_of_executed_units|stat::peak_rss_mb)" "target/$target.log" | sed "s/^/  $target /" || true
    fi
done
exit $status
