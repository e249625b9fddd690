#!/usr/bin/env bash
# Set up moelab on a Debian 12 machine: install the Debian packages it needs when they are missing,
# then configure and build. Sourced by scripts/demo.sh and scripts/test.sh; can be run alone.
#   scripts/setup.sh [BUILD_DIR] [extra cmake -D options...]
# Environment: MOELAB_JOBS (parallel build jobs, default: all cores).
set -euo pipefail

MOELAB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOELAB_DEBS=(cmake make g++ libeigen3-dev libcli11-dev libgtest-dev libopenmpi-dev openmpi-bin
             nlohmann-json3-dev python3 python3-numpy)

moelab_install_debs() {
  local missing=()
  for pkg in "${MOELAB_DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "moelab setup: installing ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "moelab setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo="sudo"
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# moelab_build BUILD_DIR [cmake options...]: configure (once) and build.
moelab_build() {
  local build_dir="$1"; shift
  cmake -S "$MOELAB_ROOT" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "$@" >"$build_dir.configure.log" 2>&1 \
    || { cat "$build_dir.configure.log" >&2; echo "moelab setup: configure failed (log above)" >&2; exit 1; }
  grep "^-- moelab" "$build_dir.configure.log" || true
  cmake --build "$build_dir" -j "${MOELAB_JOBS:-$(nproc)}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  moelab_install_debs
  moelab_build "${1:-$MOELAB_ROOT/build}" "${@:2}"
fi
