#!/usr/bin/env bash
# Builds the Debian images the voxwire service images start FROM, offline of any
# container registry: debootstrap from the Debian mirror apt already uses here,
# then `docker import`.
#
#   voxwire/debian:bookworm          minbase bookworm (what `debian:bookworm-slim` is elsewhere)
#   voxwire/runtime-base:bookworm    + the runtime packages of deploy/Dockerfile's runtime stage
#
# Each image is skipped when it already exists (the engine caches it between runs);
# VOXWIRE_BASE_REBUILD=1 rebuilds both.
set -euo pipefail
cd "$(dirname "$0")/.."

base=voxwire/debian:bookworm
runtime=voxwire/runtime-base:bookworm
suite=bookworm

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# The first deb822 `URIs:` (or one-line `deb`) entry that serves the Debian archive itself
# (not -security, not a third-party repo).
debian_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '/^URIs:/ {for (i = 2; i <= NF; i++) print $i}' \
        | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)
  if [ -z "$uri" ]; then
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) {print $i; break}}' \
          | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

if [ "${VOXWIRE_BASE_REBUILD:-0}" = 1 ]; then
  docker image rm -f "$runtime" "$base" >/dev/null 2>&1 || true
fi

if have_image "$base"; then
  echo "base-image: $base exists (cached)" >&2
else
  command -v debootstrap >/dev/null || {
    echo "base-image: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  mirror=$(debian_mirror)
  root=$(mktemp -d /tmp/voxwire-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "base-image: debootstrap --variant=minbase $suite from $mirror" >&2
  started=$(date +%s)
  debootstrap --variant=minbase "$suite" "$root" "$mirror" >/tmp/voxwire-debootstrap.log 2>&1 || {
    tail -n 30 /tmp/voxwire-debootstrap.log >&2; exit 1; }
  # Keep the image small and its apt pointed at the same mirror, as the official slim image does.
  rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/tmp/*
  printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$suite" "$mirror" "$suite" \
    >"$root/etc/apt/sources.list"
  tar -C "$root" -c . | docker import \
    --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' - "$base" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "base-image: $base built in $(( $(date +%s) - started )) s" >&2
fi

if have_image "$runtime"; then
  echo "base-image: $runtime exists (cached)" >&2
else
  echo "base-image: building $runtime" >&2
  # The runtime stages have no COPY: the deploy/ directory is context enough.
  docker build -q -f deploy/Dockerfile --target runtime-base \
    --build-arg BASE_IMAGE="$base" -t "$runtime" deploy >/dev/null 2>/tmp/voxwire-runtime-base.log || {
    cat /tmp/voxwire-runtime-base.log >&2; exit 1; }
  echo "base-image: $runtime built" >&2
fi
