#!/usr/bin/env bash
# Installs what building and testing voxwire needs, when it is missing:
# espeak-ng (the Piper voice's phonemizer, and speech for the STT tests),
# clang (bindgen for the espeak-ng binding), and `just` (from PyPI).
set -euo pipefail

need_apt=()
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
[ -e /usr/include/espeak-ng/speak_lib.h ] || need_apt+=(libespeak-ng-dev)
command -v clang >/dev/null || need_apt+=(clang)
# clang-sys needs the unversioned libclang.so of libclang-dev; clang alone brings only libclang-N.so.1.
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || need_apt+=(libclang-dev)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
command -v curl >/dev/null || need_apt+=(curl)
# Headless Chromium and its WebDriver, for the web console's browser test.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
# The benchmark plot's text (voxbench reads the TTF at run time).
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
# The compose stack (just up, just compose-e2e): the offline Debian base, stripped binaries.
[ -x /usr/sbin/debootstrap ] || command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v objcopy >/dev/null || need_apt+=(binutils)
# The reliability tests: network namespaces and veth links (ip), signals to services (kill).
command -v ip >/dev/null || need_apt+=(iproute2)
command -v kill >/dev/null || need_apt+=(procps)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "installing Debian packages: ${need_apt[*]}" >&2
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! command -v just >/dev/null; then
  echo "installing just (PyPI rust-just)" >&2
  python3 -m pip install --quiet --user rust-just 2>/dev/null || python3 -m pip install --quiet rust-just
fi
command -v cargo >/dev/null || { echo "cargo is required (rustup)" >&2; exit 1; }
