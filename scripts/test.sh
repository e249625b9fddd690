#!/usr/bin/env bash
# The README's test command: set up (packages, configure, build) and run the whole test suite.
#   scripts/test.sh               default build (CUDA compiled when nvcc is found): build/
#   scripts/test.sh --sanitize    CPU-only build with AddressSanitizer + UBSan: build-sanitize/
#   scripts/test.sh --all         both, one after the other (what CI runs)
# GPU tests (label `gpu`) run when a GPU is visible and are reported as skipped otherwise.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

run_suite() {  # run_suite BUILD_DIR [cmake options...]
  local build_dir="$1"; shift
  moelab_build "$build_dir" "$@"
  (cd "$build_dir" && ctest --output-on-failure -j "${MOELAB_JOBS:-$(nproc)}")
}

mode="${1:-default}"
moelab_install_debs
case "$mode" in
  default)    run_suite "$MOELAB_ROOT/build" ;;
  --sanitize) run_suite "$MOELAB_ROOT/build-sanitize" -DMOELAB_CUDA=OFF -DMOELAB_SANITIZE=ON ;;
  --all)      run_suite "$MOELAB_ROOT/build"
              run_suite "$MOELAB_ROOT/build-sanitize" -DMOELAB_CUDA=OFF -DMOELAB_SANITIZE=ON ;;
  *) echo "usage: scripts/test.sh [--sanitize|--all]" >&2; exit 2 ;;
esac
