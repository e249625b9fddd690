#!/usr/bin/env bash
# Set up moelab on a Debian 12 machine: install the Debian packages it needs when they are missing,
# then configure and build. Sourced by scripts/demo.sh and scripts/test.sh; can be run alone.
#   scripts/setup.sh [BUILD_DIR] [extra cmake -D options...]
# Environment: MOELAB_JOBS (parallel build jobs, default: all cores).
set -euo pipefail

MOELAB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# oneDNN's CMake package looks for OpenCL (Debian builds oneDNN with an OpenCL GPU runtime), and the
# packages that CMake needs for that are only recommended by libdnnl-dev, which apt here skips.
MOELAB_DEBS=(cmake make g++ libeigen3-dev libdnnl-dev ocl-icd-opencl-dev opencl-c-headers libcli11-dev
             libgtest-dev libopenmpi-dev openmpi-bin nlohmann-json3-dev python3 python3-numpy)

# moelab_install_debs [extra packages...]: the build's packages plus the caller's extras.
moelab_install_debs() {
  local missing=()
  for pkg in "${MOELAB_DEBS[@]}" "$@"; do
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

# moelab_install_pip PACKAGE...: Python packages from PyPI for the checks that compare with other
# tools (the Hugging Face tokenizers); a failure only warns, and those checks then report skipped.
moelab_install_pip() {
  python3 -c "import sys, importlib.util as u; sys.exit(any(u.find_spec(p) is None for p in sys.argv[1:]))" "$@" \
    2>/dev/null && return 0
  echo "moelab setup: pip installing $*"
  python3 -m pip install --quiet --disable-pip-version-check "$@" \
    || echo "moelab setup: warning: pip could not install $* (the checks that need it will be skipped)" >&2
}

# moelab_build BUILD_DIR [cmake options...]: configure (once) and build everything, or only the
# targets in MOELAB_BUILD_TARGETS (e.g. "moelab": the command line and what it links).
moelab_build() {
  local build_dir="$1"; shift
  cmake -S "$MOELAB_ROOT" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "$@" >"$build_dir.configure.log" 2>&1 \
    || { cat "$build_dir.configure.log" >&2; echo "moelab setup: configure failed (log above)" >&2; exit 1; }
  grep "^-- moelab" "$build_dir.configure.log" || true
  local targets=()
  for t in ${MOELAB_BUILD_TARGETS:-}; do targets+=(--target "$t"); done
  cmake --build "$build_dir" -j "${MOELAB_JOBS:-$(nproc)}" "${targets[@]}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  moelab_install_debs
  moelab_build "${1:-$MOELAB_ROOT/build}" "${@:2}"
fi
