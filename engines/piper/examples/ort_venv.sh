#!/usr/bin/env bash
# Idempotent: makes (or reuses) the Python venv with the reference Piper
# runtime, onnxruntime from PyPI, that examples/piper_rtf.rs measures the
# native voice against. Prints the venv's python on stdout.
#   engines/piper/examples/ort_venv.sh [VENV_DIR]   (default: target/venv-piper-ort)
set -euo pipefail

onnxruntime_version=1.32.0
venv=${1:-target/venv-piper-ort}

installed() {
  "$venv/bin/python" -c 'import onnxruntime, sys; sys.exit(onnxruntime.__version__ != sys.argv[1])' \
    "$onnxruntime_version" 2>/dev/null
}

if [ ! -x "$venv/bin/python" ] || ! installed; then
  echo "ort_venv: installing onnxruntime==$onnxruntime_version into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "onnxruntime==$onnxruntime_version"
fi
echo "$venv/bin/python"
