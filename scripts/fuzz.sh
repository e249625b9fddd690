#!/usr/bin/env bash
# libFuzzer over moelab's readers of outside input (tests/fuzz/README.md). Not part of the default
# build or of CI: CI replays the kept corpus (ctest label `fuzz`) in both its builds instead.
#   scripts/fuzz.sh build                  clang build of the harnesses (ASan + UBSan) in build-fuzz/
#   scripts/fuzz.sh run TARGET [SECONDS]   fuzz one target (default 600 s) from tests/fuzz/corpus/TARGET,
#                                          then merge the inputs that add coverage into that corpus
#   scripts/fuzz.sh all [SECONDS]          every target in turn
#   scripts/fuzz.sh minimize [TARGET]      shrink tests/fuzz/corpus/TARGET (default: all) to the
#                                          inputs that keep its coverage (seed_* and crash_* always stay)
# Targets: the fuzz_*.cpp of tests/fuzz (safetensors, shard, tokenizer, config, trainer_state).
# A crash leaves its input in build-fuzz/artifacts/TARGET/ and libFuzzer's report on stderr; replay
# it with build-fuzz/tests/fuzz/fuzz_TARGET FILE.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
build="$MOELAB_ROOT/build-fuzz"
corpus="$MOELAB_ROOT/tests/fuzz/corpus"

targets() { for f in "$MOELAB_ROOT"/tests/fuzz/fuzz_*.cpp; do basename "$f" .cpp | sed 's/^fuzz_//'; done; }

build_fuzz() {
  moelab_install_debs clang libclang-rt-dev
  CC=clang CXX=clang++ moelab_build "$build" -DMOELAB_FUZZ=ON -DMOELAB_CUDA=OFF -DMOELAB_MPI=OFF \
    -DMOELAB_NCCL=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo
}

run_one() {  # run_one TARGET SECONDS
  local t="$1" seconds="$2" bin="$build/tests/fuzz/fuzz_$1"
  [ -x "$bin" ] || { echo "fuzz: no $bin (run scripts/fuzz.sh build; targets: $(targets | xargs))" >&2; exit 2; }
  mkdir -p "$build/found/$t" "$build/artifacts/$t"
  echo "fuzz: $t for ${seconds}s"
  # -rss_limit_mb: an input that makes a reader allocate gigabytes is a finding, not a slow run.
  OMP_NUM_THREADS=1 "$bin" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=16384 \
    -print_final_stats=1 -artifact_prefix="$build/artifacts/$t/" "$build/found/$t" "$corpus/$t"
  OMP_NUM_THREADS=1 "$bin" -merge=1 "$corpus/$t" "$build/found/$t" 2>&1 | grep -E "MERGE-OUTER: [0-9]+ new files" || true
}

minimize_one() {  # minimize_one TARGET
  local t="$1" bin="$build/tests/fuzz/fuzz_$1" dir="$corpus/$1" tmp before
  [ -x "$bin" ] || { echo "fuzz: no $bin (run scripts/fuzz.sh build)" >&2; exit 2; }
  tmp=$(mktemp -d)
  # The seeds and the crash inputs stay; of the rest, only what adds coverage to them is kept.
  cp "$dir"/seed_* "$tmp"/ && { cp "$dir"/crash_* "$tmp"/ 2>/dev/null || true; }
  OMP_NUM_THREADS=1 "$bin" -merge=1 "$tmp" "$dir" > /dev/null 2>&1
  before=$(ls "$dir" | wc -l)
  rm -rf "$dir" && mv "$tmp" "$dir" && chmod 755 "$dir"
  echo "fuzz: corpus/$t: $before -> $(ls "$dir" | wc -l) inputs"
}

case "${1:-}" in
  build) build_fuzz ;;
  run)   [ $# -ge 2 ] || { echo "usage: scripts/fuzz.sh run TARGET [SECONDS]" >&2; exit 2; }
         run_one "$2" "${3:-600}" ;;
  all)   for t in $(targets); do run_one "$t" "${2:-600}"; done ;;
  minimize) for t in ${2:-$(targets)}; do minimize_one "$t"; done ;;
  *)     echo "usage: scripts/fuzz.sh build | run TARGET [SECONDS] | all [SECONDS] | minimize [TARGET]" >&2; exit 2 ;;
esac
