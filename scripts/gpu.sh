#!/usr/bin/env bash
# The GPU machine script (TOOLCHAIN.md, "The GPU machine"). That machine has CUDA, a compiler and
# Python, but none of our Debian packages and no internet, so:
#   scripts/gpu.sh prepare   HERE: apt-get download the header/library packages the build needs
#                            into .gpu_deps/debs (git-ignored; carried to the device)
#   scripts/gpu.sh run       THERE: unpack them into .gpu_deps/prefix (never into /), build with
#                            CUDA, run `ctest -L gpu`, compute-sanitizer (memcheck, racecheck) over
#                            the GPU tests and over a short `moelab bench --device cuda`, and print a
#                            summary table last. Logs go to $OUT (or gpu-logs/ when $OUT is unset).
#   scripts/gpu.sh bench [preset ...]
#                            THERE: build if needed, then scripts/gpu_bench.sh: moelab's bench next
#                            to the PyTorch twin (eager, torch.compile) and HF DeepseekV3, with the
#                            ratio table last (default presets: small v2lite_mini).
# With the device tool: run(command="bash scripts/gpu.sh run", carry=[".gpu_deps"]), then
# run(command="bash scripts/gpu.sh bench small", carry=[".gpu_deps"]) (one preset per call fits
# the 10-minute limit with torch.compile's warm-up).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.gpu_deps"
# oneDNN's CMake package asks for OpenCL (Debian builds it with an OpenCL GPU runtime): the ICD loader
# and its headers come along.
PKGS=(libeigen3-dev libdnnl-dev libdnnl2 ocl-icd-opencl-dev ocl-icd-libopencl1 opencl-c-headers libcli11-dev
      libgtest-dev nlohmann-json3-dev)

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
       "-Dnlohmann_json_DIR=$prefix/usr/share/cmake/nlohmann_json -DGTest_DIR=$gtest_dir" \
       "-Ddnnl_DIR=$prefix/usr/lib/x86_64-linux-gnu/cmake/dnnl -DOpenCL_INCLUDE_DIR=$prefix/usr/include" \
       "-DOpenCL_LIBRARY=$prefix/usr/lib/x86_64-linux-gnu/libOpenCL.so"
}

BUILD="$ROOT/build-gpu"

# Configures and builds into build-gpu/ against the unpacked packages; logs into $1.
build() {
  local out=$1
  # shellcheck disable=SC2046
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMOELAB_CUDA=ON -DMOELAB_MPI=OFF $(unpack) \
    > "$out/configure.log" 2>&1 && cmake --build "$BUILD" -j "$(nproc)" > "$out/build.log" 2>&1
}

run() {
  local out="${OUT:-$ROOT/gpu-logs}"; mkdir -p "$out"
  local build="$BUILD"
  { nvidia-smi || true; nvcc --version || true; g++ --version | head -1; cmake --version | head -1; } > "$out/machine.txt" 2>&1
  local status_build=FAIL status_tests=FAIL status_memcheck=SKIP status_racecheck=SKIP status_bench=FAIL status_fp8=FAIL
  if build "$out"; then
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
      # The whole training step under memcheck: every kernel with the model's real shapes.
      compute-sanitizer --tool memcheck --error-exitcode 1 "$build/train/moelab" bench \
        --config "$ROOT/examples/tiny.toml" --device cuda --steps 2 --warmup 1 > "$out/sanitizer_bench.log" 2>&1 \
        || status_memcheck=FAIL
      # And the FP8 step (quantisation kernels, cuBLASLt block scaling or the reference GEMM).
      compute-sanitizer --tool memcheck --error-exitcode 1 "$build/train/moelab" bench --precision fp8 \
        --config "$ROOT/examples/tiny.toml" --device cuda --steps 2 --warmup 1 > "$out/sanitizer_bench_fp8.log" 2>&1 \
        || status_memcheck=FAIL
    fi
    "$build/train/moelab" bench --config "$ROOT/examples/shakespeare_moe.toml" --device cuda --steps 20 --warmup 3 \
      > "$out/bench_shakespeare_moe.log" 2>&1 && status_bench=ok
    "$build/train/moelab" bench --config "$ROOT/examples/shakespeare_moe.toml" --device cuda --precision fp8 \
      --steps 20 --warmup 3 > "$out/bench_shakespeare_moe_fp8.log" 2>&1 && status_fp8=ok
  fi
  tail -n 30 "$out/build.log" 2>/dev/null | grep -iE "error" | head -20 || true
  tail -n 40 "$out/ctest_gpu.log" 2>/dev/null || true
  cat "$out/info.txt" 2>/dev/null || true
  cat "$out/bench_shakespeare_moe.log" "$out/bench_shakespeare_moe_fp8.log" 2>/dev/null || true
  printf '\n| step | result | log |\n|---|---|---|\n'
  printf '| build (CUDA) | %s | build.log |\n' "$status_build"
  printf '| ctest -L gpu | %s | ctest_gpu.log |\n' "$status_tests"
  printf '| compute-sanitizer memcheck | %s | sanitizer_memcheck.log |\n' "$status_memcheck"
  printf '| compute-sanitizer racecheck | %s | sanitizer_racecheck.log |\n' "$status_racecheck"
  printf '| bench shakespeare_moe (cuda bf16) | %s | bench_shakespeare_moe.log |\n' "$status_bench"
  printf '| bench shakespeare_moe (cuda fp8) | %s | bench_shakespeare_moe_fp8.log |\n' "$status_fp8"
  [ "$status_build" = ok ] && [ "$status_tests" = ok ]
}

bench() {
  local out="${OUT:-$ROOT/gpu-logs}"; mkdir -p "$out"
  [ -x "$BUILD/train/moelab" ] || build "$out" || { tail -n 30 "$out/build.log"; exit 1; }
  bash "$ROOT/scripts/gpu_bench.sh" "$BUILD" "$out" "$@"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  bench) shift; bench "$@" ;;
  *) echo "usage: scripts/gpu.sh prepare|run|bench [preset ...]" >&2; exit 2 ;;
esac
