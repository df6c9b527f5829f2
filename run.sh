#!/usr/bin/env bash
# The two commands of the README, on a fresh machine:
#   ./run.sh demo   start the stack and make a round trip through it
#   ./run.sh test   run the test suite
# Both install what they need first (Debian packages, `just`), then hand over
# to the justfile.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"
case "${1:-}" in
  demo) exec just demo ;;
  test) exec just test ;;
  *) echo "usage: $0 demo|test" >&2; exit 2 ;;
esac
