#!/usr/bin/env bash
# The GPU machine script (TOOLCHAIN.md, "The GPU machine"). That machine has CUDA, a compiler and
# Python, but none of our Debian packages and no internet, so:
#   scripts/gpu.sh prepare   HERE: apt-get download the header/library packages the build needs
#                            into .gpu_deps/debs (git-ignored; carried to the device)
#   scripts/gpu.sh run       THERE: unpack them into .gpu_deps/prefix (never into /), build with
#                            CUDA, run `ctest -L gpu`, compute-sanitizer (memcheck, racecheck) over
#                            the GPU tests, and print a summary table last. Logs go to $OUT (or
#                            gpu-logs/ when $OUT is unset).
# With the device tool: run(command="bash scripts/gpu.sh run", carry=[".gpu_deps"]).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.gpu_deps"
PKGS=(libeigen3-dev libcli11-dev libgtest-dev nlohmann-json3-dev)

prepare() {
  mkdir -p "$DEPS/debs"
  [ -n "$(ls /var/lib/apt/lists/ 2>/dev/null | grep -v lock)" ] || apt-get update -qq
  (cd "$DEPS/debs" && apt-get download "${PKGS[@]}")
  ls -l "$DEPS/debs"
}

# Unpacks the carried .deb files and prints the cmake -D options that point at them.
unpack() {
  local prefix="$DEPS/prefix"
  rm -rf "$prefix" && mkdir -p "$prefix"
  for deb in "$DEPS"/debs/*.deb; do dpkg-deb -x "$deb" "$prefix" 2>/dev/null || dpkg -x "$deb" "$prefix"; done
  local gtest_dir; gtest_dir=$(dirname "$(find "$prefix" -name GTestConfig.cmake | head -1)")
  echo "-DEigen3_DIR=$prefix/usr/share/eigen3/cmake -DCLI11_DIR=$prefix/usr/share/cmake/CLI11" \
       "-Dnlohmann_json_DIR=$prefix/usr/share/cmake/nlohmann_json -DGTest_DIR=$gtest_dir"
}

run() {
  local out="${OUT:-$ROOT/gpu-logs}"; mkdir -p "$out"
  local build="$ROOT/build-gpu" jobs; jobs=$(nproc)
  { nvidia-smi || true; nvcc --version || true; g++ --version | head -1; cmake --version | head -1; } > "$out/machine.txt" 2>&1
  local status_build=FAIL status_tests=FAIL status_memcheck=SKIP status_racecheck=SKIP
  # shellcheck disable=SC2046
  if cmake -S "$ROOT" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMOELAB_CUDA=ON -DMOELAB_MPI=OFF $(unpack) \
       > "$out/configure.log" 2>&1 && cmake --build "$build" -j "$jobs" > "$out/build.log" 2>&1; then
    status_build=ok
    "$build/train/moelab" info > "$out/info.txt" 2>&1 || true
    (cd "$build" && ctest -L gpu --output-on-failure) > "$out/ctest_gpu.log" 2>&1 && status_tests=ok
    if command -v compute-sanitizer > /dev/null; then
      for tool in memcheck racecheck; do
        if compute-sanitizer --tool "$tool" --error-exitcode 1 "$build/tests/moelab_gpu_tests" \
             > "$out/sanitizer_$tool.log" 2>&1; then
          eval "status_$tool=ok"
        else
          eval "status_$tool=FAIL"
        fi
      done
    fi
  fi
  tail -n 30 "$out/build.log" 2>/dev/null | grep -iE "error" | head -20 || true
  tail -n 40 "$out/ctest_gpu.log" 2>/dev/null || true
  cat "$out/info.txt" 2>/dev/null || true
  printf '\n| step | result | log |\n|---|---|---|\n'
  printf '| build (CUDA) | %s | build.log |\n' "$status_build"
  printf '| ctest -L gpu | %s | ctest_gpu.log |\n' "$status_tests"
  printf '| compute-sanitizer memcheck | %s | sanitizer_memcheck.log |\n' "$status_memcheck"
  printf '| compute-sanitizer racecheck | %s | sanitizer_racecheck.log |\n' "$status_racecheck"
  [ "$status_build" = ok ] && [ "$status_tests" = ok ]
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: scripts/gpu.sh prepare|run" >&2; exit 2 ;;
esac
