#!/usr/bin/env bash
# The README's test command: set up (packages, configure, build) and run the whole test suite.
#   scripts/test.sh               default build (CUDA compiled when nvcc is found): build/
#   scripts/test.sh --sanitize    CPU-only build with AddressSanitizer + UBSan: build-sanitize/
#   scripts/test.sh --all         both, one after the other (what CI runs)
# GPU tests (label `gpu`) run when a GPU is visible and are reported as skipped otherwise; the
# Python cross-checks (label `python`) are skipped where their packages could not be installed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

run_suite() {  # run_suite BUILD_DIR CTEST_ARGS [cmake options...]
  local build_dir="$1" ctest_args="$2"; shift 2
  moelab_build "$build_dir" -DMOELAB_MPI=ON "$@"  # the `mpi` tests must run, not vanish
  # shellcheck disable=SC2086
  (cd "$build_dir" && ctest --output-on-failure -j "${MOELAB_JOBS:-$(nproc)}" $ctest_args)
}
# The sanitizer build runs the C++ suites; the Python cross-checks already ran in the default one.
sanitize=(-DMOELAB_CUDA=OFF -DMOELAB_SANITIZE=ON)

mode="${1:-default}"
# python3-torch (Debian's, for /usr/bin/python3): the PyTorch twin's checks; tokenizers (PyPI):
# the check that Hugging Face loads moelab's tokenizer.json to the same ids; safetensors + numpy
# (PyPI): the check that the safetensors package reads `moelab export`'s model.safetensors; ml_dtypes
# (PyPI): the check of the FP8 quantisation against its float8_e4m3fn.
moelab_install_debs python3-torch python3-matplotlib
moelab_install_pip tokenizers safetensors numpy ml_dtypes
case "$mode" in
  default)    run_suite "$MOELAB_ROOT/build" "" ;;
  --sanitize) run_suite "$MOELAB_ROOT/build-sanitize" "-LE python" "${sanitize[@]}" ;;
  --all)      run_suite "$MOELAB_ROOT/build" ""
              run_suite "$MOELAB_ROOT/build-sanitize" "-LE python" "${sanitize[@]}" ;;
  *) echo "usage: scripts/test.sh [--sanitize|--all]" >&2; exit 2 ;;
esac
