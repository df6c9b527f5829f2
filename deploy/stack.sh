#!/usr/bin/env bash
# The compose stack on this machine: `just up` / `just down` / scripts/compose-e2e.sh.
#
#   deploy/stack.sh build           base images (offline), host binaries, service images
#   deploy/stack.sh up [ARGS...]    build, `compose up -d ARGS`, wait until every container is healthy
#   deploy/stack.sh down            remove the stack's containers and networks
#   deploy/stack.sh wait-healthy    poll until every container of the stack is healthy
#   deploy/stack.sh compose ARGS... any compose command on the stack
#
# VOXWIRE_BINARIES=prebuilt (default): images FROM the offline Debian base (scripts/base-image.sh)
#   with binaries from the host's cargo build, VOXWIRE_PROFILE=dev (default) or release.
# VOXWIRE_BINARIES=source: the Dockerfile compiles in rust:1-bookworm FROM debian:bookworm-slim
#   (needs a registry).
# VOXWIRE_PROJECT (default voxwire) names the compose project; VOXWIRE_MODEL_DIR the host models.
# Works with `docker compose` (plugin) or docker-compose 1.29; polls health itself (no --wait).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

export VOXWIRE_PROJECT=${VOXWIRE_PROJECT:-voxwire}
export VOXWIRE_BINARIES=${VOXWIRE_BINARIES:-prebuilt}
export VOXWIRE_PROFILE=${VOXWIRE_PROFILE:-dev}
export VOXWIRE_MODEL_DIR=${VOXWIRE_MODEL_DIR:-$(cd "$repo/.." && pwd)/shared/models}
healthy_timeout=${VOXWIRE_HEALTHY_TIMEOUT:-240}

if [ "$VOXWIRE_BINARIES" = prebuilt ]; then
  export VOXWIRE_BASE_IMAGE=${VOXWIRE_BASE_IMAGE:-voxwire/debian:bookworm}
  # The build stage only copies the staged binaries, so any Debian image will do.
  export VOXWIRE_RUST_IMAGE=${VOXWIRE_RUST_IMAGE:-$VOXWIRE_BASE_IMAGE}
fi

log() { echo "stack: $*" >&2; }

compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -f "$repo/deploy/compose.yaml" -p "$VOXWIRE_PROJECT" "$@"
  elif command -v docker-compose >/dev/null; then
    docker-compose -f "$repo/deploy/compose.yaml" -p "$VOXWIRE_PROJECT" "$@"
  else
    echo "stack: neither 'docker compose' nor docker-compose is installed" >&2
    return 1
  fi
}

# Container ids of the project (of one service when given).
containers() {
  local filter=(--filter "label=com.docker.compose.project=$VOXWIRE_PROJECT")
  [ $# -eq 0 ] || filter+=(--filter "label=com.docker.compose.service=$1")
  docker ps -q "${filter[@]}"
}

host_binaries() {
  local dir=debug flags=()
  case "$VOXWIRE_PROFILE" in
    dev) ;;
    release) dir=release; flags=(--release) ;;
    *) dir=$VOXWIRE_PROFILE; flags=(--profile "$VOXWIRE_PROFILE") ;;
  esac
  log "cargo build (${VOXWIRE_PROFILE} profile)"
  # All of the workspace's binaries, as every script builds them: a subset would
  # resolve other dependency features and compile the graph again.
  cargo build --quiet "${flags[@]}" --workspace --bins
  rm -rf target/deploy-bin
  mkdir -p target/deploy-bin
  for bin in orchestrator tts-worker stt-worker voxctl; do
    # Debug info is most of a dev binary's size and no use in the image.
    objcopy --strip-debug "target/$dir/$bin" "target/deploy-bin/$bin"
  done
}

build() {
  if [ "$VOXWIRE_BINARIES" = prebuilt ]; then
    scripts/base-image.sh
    host_binaries
  fi
  log "building images"
  compose build >/tmp/voxwire-compose-build.log 2>&1 || {
    tail -n 40 /tmp/voxwire-compose-build.log >&2; return 1; }
  # Untagged leftovers: the build stage's image (sources and binaries) and the service images
  # this build replaced.
  docker image prune -f --filter label=org.voxwire.image >/dev/null
}

# Every container of the project healthy; fails naming the ones that are not.
wait_healthy() {
  local deadline=$(( $(date +%s) + healthy_timeout )) id status pending
  while :; do
    pending=()
    for id in $(containers); do
      status=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id" 2>/dev/null || echo gone)
      [ "$status" = healthy ] || pending+=("$(docker inspect -f '{{.Name}}' "$id" 2>/dev/null || echo "$id"):$status")
    done
    if [ -z "$(containers)" ]; then pending=("no containers"); fi
    [ ${#pending[@]} -eq 0 ] && return 0
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "not healthy after ${healthy_timeout} s: ${pending[*]}"
      return 1
    fi
    sleep 0.5
  done
}

cmd=${1:-}
[ $# -eq 0 ] || shift
case "$cmd" in
  build) build ;;
  up)
    build
    log "up -d $*"
    compose up -d "$@"
    wait_healthy
    log "healthy: $(docker ps --filter "label=com.docker.compose.project=$VOXWIRE_PROJECT" --format '{{.Names}}' | sort | tr '\n' ' ')"
    ;;
  down) compose down --remove-orphans --timeout 20 ;;
  wait-healthy) wait_healthy ;;
  compose) compose "$@" ;;
  *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
