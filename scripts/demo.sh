#!/usr/bin/env bash
# The main job: start the stack on loopback (TTS worker with the real Piper
# voice, STT worker with Whisper, the orchestrator in front), wait until the
# orchestrator reports both pools SERVING, then a round trip through it:
# text -> speech (WAV) -> text. Stops everything on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${VOXWIRE_MODEL_DIR:=$(cd .. && pwd)/shared/models}"
export VOXWIRE_MODEL_DIR
for model in piper-en_US-joe-medium whisper-tiny.en; do
  [ -d "$VOXWIRE_MODEL_DIR/$model" ] || { echo "missing $VOXWIRE_MODEL_DIR/$model (set VOXWIRE_MODEL_DIR)" >&2; exit 1; }
done

started=$(date +%s)
# A line per stage with the time since the start, so a first run (a cold
# build takes minutes) shows that it is working and how far it is.
stage() { echo "[demo +$(( $(date +%s) - started ))s] $*"; }
stage "building the workspace's binaries (cargo's progress follows; a first build takes several minutes)"
# Every script builds the same set (all the workspace's binaries): a subset
# resolves different dependency features and compiles the graph a second time.
cargo build --workspace --bins
stage "built"
bin=target/debug
out=target/demo
mkdir -p "$out"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

TTS=127.0.0.1:50061 STT=127.0.0.1:50071 ORCH=127.0.0.1:50051 HTTP=127.0.0.1:8080
stage "starting orchestrator, tts-worker (Piper) and stt-worker (Whisper); loading models"
# The orchestrator starts first on purpose: it waits for its workers by their
# health status, so start order does not matter.
"$bin/orchestrator" --listen "$ORCH" --http-listen "$HTTP" --tts "$TTS" --stt "$STT" 2>"$out/orchestrator.log" & pids+=($!)
"$bin/tts-worker" --listen "$TTS" 2>"$out/tts-worker.log" & pids+=($!)
"$bin/stt-worker" --listen "$STT" 2>"$out/stt-worker.log" & pids+=($!)

# Readiness is the gRPC health status; poll it with a deadline.
deadline=$(( $(date +%s) + 180 ))
for target in "$TTS" "$STT" "$ORCH"; do
  until "$bin/voxctl" health "$target" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$target not SERVING in time; logs in $out/" >&2; exit 1; }
    sleep 0.2
  done
  stage "$target SERVING"
done
until curl -fsS "http://$HTTP/readyz" >/dev/null 2>&1; do
  [ "$(date +%s)" -lt "$deadline" ] || { echo "orchestrator not ready; logs in $out/" >&2; exit 1; }
  sleep 0.2
done

stage "orchestrator ready: round trip"
text="Hello from voxwire. This sentence went through the orchestrator to a Piper voice and back through Whisper."
echo "say:        $text"
"$bin/voxctl" --orchestrator "$ORCH" say "$text" -o "$out/hello.wav"
echo -n "transcribe: "
"$bin/voxctl" --orchestrator "$ORCH" transcribe "$out/hello.wav"
echo "audio in $out/hello.wav; logs in $out/; took $(( $(date +%s) - started )) s"
echo "OpenAI-compatible API: base_url http://$HTTP/v1 (docs/openai.md)"
# VOXWIRE_DEMO_STAY=1 keeps the stack up for the web console (Ctrl-C stops it).
if [ "${VOXWIRE_DEMO_STAY:-}" = 1 ]; then
  echo "web console: http://$HTTP/ (Ctrl-C stops the stack)"
  wait
fi
