#!/usr/bin/env bash
# The compose stack, tested for real (`just compose-e2e`):
#   1. up: all three containers healthy, and each worker was seen NOT_SERVING while its
#      model loaded (polled from the start with `voxctl health`), SERVING after;
#   2. `conformance tts` / `conformance stt` against the containerized workers pass;
#   3. `voxctl say` / `voxctl transcribe` round trip through the containerized orchestrator;
#   4. `--scale tts-worker=3`: every one of the three serves turns (/api/workers counters);
#   5. `docker kill` the TTS worker a client session is on, mid-turn: the session's turns go on
#      on the others; restarted, the worker takes work again;
#   6. `down` leaves no container or network of the project.
# Images: FROM the offline Debian base (scripts/base-image.sh), binaries from the host build
# (VOXWIRE_PROFILE=dev by default, or release). Cleans up on failure; prints its runtime.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
started=$(date +%s)

# voxctl reads these too: set in the caller's shell they would send its turns past the
# orchestrator under test.
unset VOXWIRE_TTS VOXWIRE_STT VOXWIRE_ORCHESTRATOR VOXWIRE_SERVICE VOXWIRE_MODEL
export VOXWIRE_PROJECT=${VOXWIRE_PROJECT:-voxwire-e2e}
export VOXWIRE_PROFILE=${VOXWIRE_PROFILE:-dev}
export VOXWIRE_BINARIES=${VOXWIRE_BINARIES:-prebuilt}
export VOXWIRE_MODEL_DIR=${VOXWIRE_MODEL_DIR:-$(cd "$repo/.." && pwd)/shared/models}
case "$VOXWIRE_PROFILE" in dev) bindir=target/debug ;; *) bindir=target/$VOXWIRE_PROFILE ;; esac
work=target/compose-e2e
venv=target/compose-e2e-venv
stack=deploy/stack.sh
voxctl="$bindir/voxctl"
conformance="$bindir/conformance"
# Generated cases per property (conformance --cases); the suite's default when unset. CI lowers it: the real voice
# makes each generated TTS case cost seconds, and the full property runs already pass in `cargo test`.
cases=()
[ -z "${VOXWIRE_E2E_CASES:-}" ] || cases=(--cases "$VOXWIRE_E2E_CASES")
rm -rf "$work"
mkdir -p "$work"

step() { echo "== compose-e2e: $* ($(( $(date +%s) - started )) s)"; }
fail() { echo "compose-e2e: FAILED: $*" >&2; exit 1; }
now() { date +%s.%N; }

# Published on free host ports: other stacks (or `just demo`) may hold 50051 / 8080.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export VOXWIRE_GRPC_PORT=${VOXWIRE_GRPC_PORT:-$(free_port)}
export VOXWIRE_HTTP_PORT=${VOXWIRE_HTTP_PORT:-$(free_port)}
orch=127.0.0.1:$VOXWIRE_GRPC_PORT
http=http://127.0.0.1:$VOXWIRE_HTTP_PORT

background=()
finished=0
cleanup() {
  local rc=$?
  for pid in "${background[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then
    echo "---- compose ps / logs (last 40 lines each) ----" >&2
    $stack compose ps >&2 || true
    $stack compose logs --no-color --tail 40 >&2 || true
  fi
  [ "$finished" = 1 ] || $stack down >/dev/null 2>&1 || true
  if [ "$rc" -eq 0 ]; then
    echo "compose-e2e: PASS in $(( $(date +%s) - started )) s"
  else
    echo "compose-e2e: FAIL (exit $rc) after $(( $(date +%s) - started )) s" >&2
  fi
}
trap cleanup EXIT

containers() { # [SERVICE] -> ids of running containers of the project
  local filter=(--filter "label=com.docker.compose.project=$VOXWIRE_PROJECT")
  [ $# -eq 0 ] || filter+=(--filter "label=com.docker.compose.service=$1")
  docker ps -q "${filter[@]}"
}
ip_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
name_of() { docker inspect -f '{{.Name}}' "$1" | sed 's|^/||'; }

# GET /api/workers, as "kind address state dispatched in_flight" lines.
workers() {
  curl -fsS "$http/api/workers" | python3 -c '
import json, sys
for w in json.load(sys.stdin):
    print(w["kind"], w["address"], w["state"], w["dispatched"], w["in_flight"])'
}
serving_tts() { workers | awk '$1 == "tts" && $3 == "SERVING" {print $2}' | sort; }
dispatched_of() { workers | awk -v a="$1" '$1 == "tts" && $2 == a {print $4}'; }
# Conditions for wait_for (evaluated on every poll).
serving_tts_count_is() { [ "$(serving_tts | wc -l)" -eq "$1" ]; }
tts_is_serving() { serving_tts | grep -qx "$1"; }
in_flight_on() { [ "$(workers | awk -v a="$1" '$2 == a {print $5}')" -ge 1 ] 2>/dev/null; }
wait_for() { # SECONDS DESCRIPTION COMMAND...: poll COMMAND until it succeeds
  local deadline=$(( $(date +%s) + $1 )) what=$2
  shift 2
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 0.3
  done
}
say_turn() { # N: one turn through the orchestrator, its own session
  "$voxctl" --orchestrator "$orch" say "Turn number $1 through the stack." -o "$work/turn-$1.wav" \
    2>>"$work/turns.log"
}
# Runs turns, three at a time, until every tts endpoint named in $@ has dispatched more than
# its baseline (given as ADDRESS=COUNT) or MAX turns are done; prints the deltas.
turns_until_each_served() {
  local max=$1 n=0 pending addr base
  shift
  while :; do
    pending=()
    for pair in "$@"; do
      addr=${pair%=*}; base=${pair#*=}
      [ "$(dispatched_of "$addr")" -gt "$base" ] 2>/dev/null || pending+=("$addr")
    done
    [ ${#pending[@]} -gt 0 ] || break
    [ "$n" -lt "$max" ] || fail "after $n turns, never served a turn: ${pending[*]}"
    say_turn $((n + 1)) & local p1=$!
    say_turn $((n + 2)) & local p2=$!
    say_turn $((n + 3)) & local p3=$!
    wait $p1 && wait $p2 && wait $p3 || fail "a turn failed (see $work/turns.log)"
    n=$((n + 3))
  done
  for pair in "$@"; do
    addr=${pair%=*}; base=${pair#*=}
    echo "   $addr served $(( $(dispatched_of "$addr") - base )) turn(s)"
  done
  echo "   ($n turns)"
}

step "0. build: base images, host binaries ($VOXWIRE_PROFILE), service images"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check grpcio==1.85.1 grpcio-tools==1.85.1
fi
$stack down >/dev/null 2>&1 || true
$stack build
for image in orchestrator tts-worker stt-worker; do
  printf '   voxwire/%s: %s MB\n' "$image" \
    "$(( $(docker image inspect -f '{{.Size}}' "voxwire/$image:latest") / 1000000 ))"
done

step "1. up: health gated on the gRPC status"
# Poll each worker's health from the moment its container has an address, to catch the
# NOT_SERVING phase (the port is open while the model loads). Prints transitions only.
poll_health() {
  local deadline=$(( $(date +%s) + 240 )) t0 svc port name id ip status seen=""
  t0=$(now)
  declare -A last=()
  while [ "$(date +%s)" -lt "$deadline" ]; do
    for spec in tts-worker:50061:tts.TTSService stt-worker:50071:stt.STTService orchestrator:50051:; do
      IFS=: read -r svc port name <<<"$spec"
      for id in $(containers "$svc"); do
        ip=$(ip_of "$id" 2>/dev/null) || continue
        [ -n "$ip" ] || continue
        status=$("$voxctl" health "$ip:$port" --service "$name" 2>/dev/null) || true
        status=${status:-UNREACHABLE}
        if [ "${last[$svc/$id]:-}" != "$status" ]; then
          last[$svc/$id]=$status
          printf '%s %s %s\n' "$svc" "$status" "$(awk -v a="$(now)" -v b="$t0" 'BEGIN {printf "%.2f", a - b}')"
        fi
      done
    done
    # Done once all three kinds were seen SERVING.
    seen=$(for key in "${!last[@]}"; do
      [ "${last[$key]}" != SERVING ] || echo "${key%%/*}"
    done | sort -u | tr '\n' ' ')
    [ "$seen" = "orchestrator stt-worker tts-worker " ] && return 0
  done
}
poll_health >"$work/health.log" 2>&1 &
poller=$!
background+=("$poller")
up_started=$(date +%s)
$stack compose up -d >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; fail "compose up"; }
$stack wait-healthy
echo "   all healthy $(( $(date +%s) - up_started )) s after up"
wait "$poller" || true
sed 's/^/   health: /' "$work/health.log"
for svc in tts-worker stt-worker; do
  awk -v s="$svc" '$1 == s && $2 == "NOT_SERVING" {n = NR} $1 == s && $2 == "SERVING" && n {ok = 1} END {exit !ok}' \
    "$work/health.log" || fail "$svc was never seen NOT_SERVING before SERVING (see $work/health.log)"
done
echo "   both workers answered NOT_SERVING while loading, then SERVING"
curl -fsS "$http/readyz" >/dev/null || fail "orchestrator /readyz is not 200"

step "2. conformance against the containerized workers"
tts_ip=$(ip_of "$(containers tts-worker | head -n1)")
stt_ip=$(ip_of "$(containers stt-worker | head -n1)")
"$conformance" tts --target "$tts_ip:50061" "${cases[@]}" --junit "$work/conformance-tts.xml" >"$work/conformance-tts.log" 2>&1 \
  || { tail -n 40 "$work/conformance-tts.log" >&2; fail "conformance tts"; }
tail -n 1 "$work/conformance-tts.log" | sed 's/^/   tts: /'
"$conformance" stt --target "$stt_ip:50071" "${cases[@]}" --junit "$work/conformance-stt.xml" >"$work/conformance-stt.log" 2>&1 \
  || { tail -n 40 "$work/conformance-stt.log" >&2; fail "conformance stt"; }
tail -n 1 "$work/conformance-stt.log" | sed 's/^/   stt: /'

step "3. voxctl say / transcribe through the containerized orchestrator"
# Fraction of EXPECTED's words found in HEARD (case and punctuation ignored).
words_found() {
  python3 - "$1" "$2" <<'PY'
import re, sys
norm = lambda s: re.findall(r"[a-z0-9]+", s.lower())
want, heard = norm(sys.argv[1]), set(norm(sys.argv[2]))
print(f"{sum(w in heard for w in want) / len(want):.2f}")
PY
}
check_transcript() { # LABEL EXPECTED HEARD
  local score
  score=$(words_found "$2" "$3")
  echo "   $1: \"$3\" ($score of the words)"
  python3 -c "import sys; sys.exit(0 if float('$score') >= 0.75 else 1)" \
    || fail "$1: transcript \"$3\" does not match \"$2\""
}
sentence="The weather is nice today, and the meeting starts at ten."
"$voxctl" --orchestrator "$orch" say "$sentence" -o "$work/say.wav" 2>&1 | sed 's/^/   say: /'
[ "${PIPESTATUS[0]}" -eq 0 ] || fail "voxctl say"
heard=$("$voxctl" --orchestrator "$orch" transcribe "$work/say.wav" | tr '\n' ' ')
check_transcript "Piper voice -> Whisper" "$sentence" "$heard"
espeak_sentence="Please send the report to the office before noon."
espeak-ng -v en-us -s 160 -w "$work/espeak.wav" "$espeak_sentence"
heard=$("$voxctl" --orchestrator "$orch" transcribe "$work/espeak.wav" | tr '\n' ' ')
check_transcript "espeak-ng -> Whisper" "$espeak_sentence" "$heard"

step "4. --scale tts-worker=3: turns spread over all three"
$stack compose up -d --no-recreate --scale tts-worker=3 >>"$work/up.log" 2>&1 \
  || { tail -n 20 "$work/up.log" >&2; fail "compose up --scale"; }
$stack wait-healthy
[ "$(containers tts-worker | wc -l)" -eq 3 ] || fail "expected 3 tts-worker containers"
wait_for 30 "the orchestrator to discover three SERVING tts workers" serving_tts_count_is 3
baseline=()
for addr in $(serving_tts); do baseline+=("$addr=$(dispatched_of "$addr")"); done
turns_until_each_served 30 "${baseline[@]}"
docker stats --no-stream --format '{{.Name}} {{.MemUsage}} {{.CPUPerc}}' $(containers) \
  | sed 's/^/   stats: /'

step "5. docker kill the TTS worker a session is on, mid-turn"
stop_file=$work/session.stop
"$venv/bin/python" deploy/e2e/session_turns.py --orchestrator "$orch" --session e2e-kill \
  --proto-dir proto/proto --stop-file "$stop_file" >"$work/session.jsonl" 2>"$work/session.err" &
session=$!
background+=("$session")
ok_turns() { python3 -c '
import json, sys
rows = []
for line in open(sys.argv[1]):
    try:
        rows.append(json.loads(line))
    except ValueError:
        pass  # a line still being written
t = float(sys.argv[2])
print(sum(1 for r in rows if r["ok"] and r["t_start"] > t))' "$work/session.jsonl" "$1"; }
ok_turns_at_least() { [ "$(ok_turns "$1")" -ge "$2" ]; } # SINCE N
wait_for 60 "the session's first turns" ok_turns_at_least 0 2
# The session sticks to one worker: the one whose counter moves while only it runs.
declare -A before=()
for addr in $(serving_tts); do before[$addr]=$(dispatched_of "$addr"); done
n=$(ok_turns 0)
wait_for 60 "more session turns" ok_turns_at_least 0 $((n + 2))
victim=""
for addr in "${!before[@]}"; do
  [ "$(dispatched_of "$addr")" -gt "${before[$addr]}" ] && victim=$addr
done
[ -n "$victim" ] || fail "could not tell which worker the session is on"
victim_id=""
for id in $(containers tts-worker); do
  [ "$(ip_of "$id"):50061" = "$victim" ] && victim_id=$id
done
[ -n "$victim_id" ] || fail "no container has address $victim"
victim_name=$(name_of "$victim_id")
# Mid-turn: wait until one of the session's turns is in flight on it.
wait_for 30 "a turn in flight on $victim" in_flight_on "$victim"
# Taken before the kill: `docker kill` returns only once the container is gone, after the
# turn it cut may already have ended.
kill_time=$(now)
docker kill "$victim_id" >/dev/null
echo "   killed $victim_name ($victim) with a turn of session e2e-kill in flight"
tts_is_not_serving() { ! tts_is_serving "$1"; }
wait_for 10 "the orchestrator to drop $victim from its SERVING workers" tts_is_not_serving "$victim"
wait_for 90 "three session turns after the kill" ok_turns_at_least "$kill_time" 3
python3 - "$work/session.jsonl" "$kill_time" <<'PY' || fail "the session did not go on after the kill"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
kill = float(sys.argv[2])
cut = [r for r in rows if r["t_start"] <= kill < r["t_end"]]
after = [r for r in rows if r["t_start"] > kill]
bad = [r for r in after if not r["ok"]]
for r in cut:
    how = "ok" if r["ok"] else f'{r.get("code")}: {r.get("message")}'
    print(f'   turn {r["turn"]} (in flight at the kill, {r["frames"]} frames received): {how}')
    # Before any frame reached the client the turn must be retried on another worker;
    # after, it may only end UNAVAILABLE naming the lost worker (docs/protocol.md).
    if not r["ok"] and (r["frames"] == 0 or r.get("code") != "UNAVAILABLE"):
        bad.append(r)
print(f'   turns started after the kill: {len(after)}, failed: {sum(not r["ok"] for r in after)}')
for r in bad:
    print(f'   FAILED turn {r["turn"]}: {r.get("code")}: {r.get("message")}')
sys.exit(1 if bad or len(after) < 3 else 0)
PY
state=$(docker inspect -f '{{.State.Status}}' "$victim_id")
echo "   after the kill: container $state ($(docker inspect -f 'restarts={{.RestartCount}}' "$victim_id"))"
if [ "$state" != running ]; then
  docker start "$victim_id" >/dev/null
  echo "   docker start $victim_name"
fi
$stack wait-healthy
back=$(ip_of "$victim_id"):50061
wait_for 30 "the orchestrator to list $back as SERVING again" tts_is_serving "$back"
turns_until_each_served 30 "$back=$(dispatched_of "$back")"
touch "$stop_file"
wait "$session" || fail "session client failed: $(cat "$work/session.err")"
echo "   session e2e-kill: $(wc -l <"$work/session.jsonl") turns, $(ok_turns 0) ok"

step "6. down leaves nothing running"
$stack down >"$work/down.log" 2>&1 || { cat "$work/down.log" >&2; fail "compose down"; }
finished=1
left_containers=$(docker ps -aq --filter "label=com.docker.compose.project=$VOXWIRE_PROJECT")
left_networks=$(docker network ls -q --filter "label=com.docker.compose.project=$VOXWIRE_PROJECT")
[ -z "$left_containers" ] || fail "containers left: $left_containers"
[ -z "$left_networks" ] || fail "networks left: $left_networks"
echo "   no container, no network of project $VOXWIRE_PROJECT"
