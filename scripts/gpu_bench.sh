#!/usr/bin/env bash
# gpu_bench.sh: moelab's training bench next to its PyTorch peers, preset by preset, on one device.
#
#   scripts/gpu_bench.sh BUILD_DIR OUT_DIR [preset ...]      (default presets: small v2lite_mini)
#
# For each preset (examples/<preset>.toml, or a path to a .toml) it runs, each into its own log:
#   OUT_DIR/bench_<p>_moelab.log        BUILD_DIR/train/moelab bench --device cuda --config ... --steps 10 --warmup 3
#   OUT_DIR/bench_<p>_twin_eager.log    tests/reference/bench_torch.py --device cuda --dtype bfloat16 --peer twin
#   OUT_DIR/bench_<p>_twin_compile.log  the same with --compile
#   OUT_DIR/bench_<p>_hf.log            the same with --peer hf (transformers' DeepseekV3ForCausalLM; MLA presets only)
#   OUT_DIR/attn_<p>_moelab.log         moelab bench --kernel attention (one layer's causal attention fwd + bwd)
#   OUT_DIR/attn_<p>_sdpa.log           bench_torch.py --kernel attention (torch's scaled_dot_product_attention,
#                                       real bf16 tensors on cuda; with Dqk != Dv also v padded to Dqk)
# All runs use the preset's [train] batch_size and seq_len (both benches read them from the config),
# the same steps and warm-up, bf16 mixed precision with fp32 master weights. Then it prints, last, a
# markdown table of tokens/s and one of attention ms (also written to OUT_DIR/summary.md); a run that failed or was skipped
# shows as "-" with its exit code (77 = peer not available, 124 = timed out).
#
# Environment:
#   GPU_BENCH_DEVICE=cpu   smoke test on the CPU: default preset tiny, --steps 2 --warmup 1, fp32
#   GPU_BENCH_TIMEOUT=S    limit per run in seconds (default 300)
#   PYTHON=...             the Python with torch (default python3, else /usr/bin/python3 if only it has torch)
set -euo pipefail

usage() {
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
[[ $# -ge 2 ]] || usage
[[ $1 == -h || $1 == --help ]] && usage

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=$1
OUT_DIR=$2
shift 2
[[ -d $BUILD_DIR ]] || { echo "gpu_bench: build directory $BUILD_DIR does not exist" >&2; exit 2; }
BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
MOELAB=$BUILD_DIR/train/moelab
BENCH_TORCH=$ROOT/tests/reference/bench_torch.py

DEVICE=${GPU_BENCH_DEVICE:-cuda}
TIMEOUT=${GPU_BENCH_TIMEOUT:-300}
case $DEVICE in
  cuda) STEPS=10; WARMUP=3; DTYPE=bfloat16; DEFAULT_PRESETS=(small v2lite_mini) ;;
  cpu)  STEPS=2;  WARMUP=1; DTYPE=float32;  DEFAULT_PRESETS=(tiny) ;;
  *) echo "gpu_bench: GPU_BENCH_DEVICE must be cuda or cpu, not '$DEVICE'" >&2; exit 2 ;;
esac
PRESETS=("$@")
[[ ${#PRESETS[@]} -gt 0 ]] || PRESETS=("${DEFAULT_PRESETS[@]}")

if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  if ! python3 -c 'import torch' >/dev/null 2>&1 && /usr/bin/python3 -c 'import torch' >/dev/null 2>&1; then
    PYTHON=/usr/bin/python3
  fi
fi

# run LOG CMD...: runs CMD from the repository root into LOG under the time limit; sets RC.
RC=0
run() {
  local log=$1
  shift
  printf '+ %s\n' "$*" >"$log"
  RC=0
  (cd "$ROOT" && timeout "$TIMEOUT" "$@") >>"$log" 2>&1 || RC=$?
}

# tps LOG RC: the tokens/s the run printed, or "-" with why.
tps() {
  local v=""
  v=$(grep -m1 -oE '^(moelab|torch) tokens/s: [0-9.]+' "$1" 2>/dev/null | awk '{print $3}') || true
  if [[ $2 -eq 0 && -n $v ]]; then
    printf '%.0f' "$v"
  else
    case $2 in
      0) printf -- '- (rc 0, no tokens/s)' ;;
      77) printf -- '- (rc 77, skipped)' ;;
      124|137) printf -- '- (rc %s, timeout %ss)' "$2" "$TIMEOUT" ;;
      *) printf -- '- (rc %s)' "$2" ;;
    esac
  fi
}

# attn_ms LOG RC PREFIX: the "PREFIX attention ms: X" the run printed, or "-" with why.
attn_ms() {
  local v=""
  v=$(grep -m1 -E "^$3 attention ms: [0-9.]+" "$1" 2>/dev/null | sed -E 's/.* attention ms: ([0-9.]+).*/\1/') || true
  if [[ $2 -eq 0 && -n $v ]]; then
    printf '%s' "$v"
  else
    case $2 in
      0) printf -- '- (rc 0, no attention ms)' ;;
      77) printf -- '- (rc 77, skipped)' ;;
      124|137) printf -- '- (rc %s, timeout %ss)' "$2" "$TIMEOUT" ;;
      *) printf -- '- (rc %s)' "$2" ;;
    esac
  fi
}

is_number() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

# attention kind of a preset: the first `attention = "..."` line; ModelConfig's default is mla.
attention_of() {
  local a
  a=$(grep -m1 -E '^[[:space:]]*attention[[:space:]]*=' "$1" | sed -E 's/^[^=]*=[[:space:]]*"?([a-zA-Z]+).*/\1/') || true
  echo "${a:-mla}" | tr '[:upper:]' '[:lower:]'
}

{
  echo "gpu_bench: device $DEVICE, steps $STEPS (+$WARMUP warm-up), torch dtype $DTYPE, limit ${TIMEOUT}s per run"
  echo "  moelab: $MOELAB"
  echo "  python: $PYTHON ($("$PYTHON" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo 'no torch'))"
  if [[ $DEVICE == cuda ]] && command -v nvidia-smi >/dev/null 2>&1; then
    echo "  gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
  fi
  echo "  $(date -u '+%Y-%m-%d %H:%M UTC')"
} | tee "$OUT_DIR/environment.txt"

ROWS=()
ATTN_ROWS=()
NOTES=()
for p in "${PRESETS[@]}"; do
  if [[ -f $p ]]; then
    cfg=$(cd "$(dirname "$p")" && pwd)/$(basename "$p")
  else
    cfg=$ROOT/examples/$p.toml
  fi
  name=$(basename "$cfg" .toml)
  if [[ ! -f $cfg ]]; then
    echo "gpu_bench: no preset $cfg" >&2
    ROWS+=("| $name | - (no config) | - | - | - | - | - |")
    ATTN_ROWS+=("| $name | - (no config) | - | - | - | - |")
    continue
  fi
  base=$OUT_DIR/bench_${name}

  if [[ -x $MOELAB ]]; then
    run "${base}_moelab.log" "$MOELAB" bench --device "$DEVICE" --config "$cfg" --steps "$STEPS" --warmup "$WARMUP"
  else
    echo "gpu_bench: $MOELAB not found or not executable" >"${base}_moelab.log"
    RC=127
  fi
  m_rc=$RC
  m=$(tps "${base}_moelab.log" "$m_rc")
  echo "[$name] moelab: $m"

  torch_args=("$PYTHON" "$BENCH_TORCH" --config "$cfg" --device "$DEVICE" --dtype "$DTYPE"
              --steps "$STEPS" --warmup "$WARMUP")
  run "${base}_twin_eager.log" "${torch_args[@]}" --peer twin
  te=$(tps "${base}_twin_eager.log" "$RC")
  echo "[$name] twin eager: $te"
  run "${base}_twin_compile.log" "${torch_args[@]}" --peer twin --compile
  tc=$(tps "${base}_twin_compile.log" "$RC")
  echo "[$name] twin compile: $tc"
  attn=$(attention_of "$cfg")
  if [[ $attn == mla ]]; then
    run "${base}_hf.log" "${torch_args[@]}" --peer hf
    hf=$(tps "${base}_hf.log" "$RC")
  else
    echo "skipped: attention = $attn (HF's DeepseekV3 has MLA only)" >"${base}_hf.log"
    hf="- (not MLA)"
  fi
  echo "[$name] hf: $hf"

  ratio="-"
  if is_number "$m" && is_number "$tc"; then
    ratio=$(awk -v a="$m" -v b="$tc" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }')
  fi
  mfu=$(grep -m1 -E '^model .*GFLOP/s' "${base}_moelab.log" 2>/dev/null |
        sed -E 's/^model //; s/ measured in this run//') || true
  ROWS+=("| $name | $m | $te | $tc | $hf | $ratio | ${mfu:--} |")

  # Attention alone: moelab's kernels vs torch's scaled_dot_product_attention on the same shapes.
  if [[ -x $MOELAB ]]; then
    run "${OUT_DIR}/attn_${name}_moelab.log" "$MOELAB" bench --kernel attention --device "$DEVICE" --config "$cfg" \
        --steps "$STEPS" --warmup "$WARMUP"
  else
    echo "gpu_bench: $MOELAB not found or not executable" >"${OUT_DIR}/attn_${name}_moelab.log"
    RC=127
  fi
  am=$(attn_ms "${OUT_DIR}/attn_${name}_moelab.log" "$RC" moelab)
  run "${OUT_DIR}/attn_${name}_sdpa.log" "$PYTHON" "$BENCH_TORCH" --kernel attention --config "$cfg" \
      --device "$DEVICE" --dtype "$DTYPE" --steps "$STEPS" --warmup "$WARMUP"
  as=$(attn_ms "${OUT_DIR}/attn_${name}_sdpa.log" "$RC" torch)
  ap=$(attn_ms "${OUT_DIR}/attn_${name}_sdpa.log" "$RC" 'sdpa \(v padded to Dqk\)')
  [[ $ap == "- (rc 0, no attention ms)" ]] && ap="- (no padded run: Dqk = Dv, or not on CUDA)"
  abk=$(grep -m1 -oE 'sdpa backend [a-z]+|sdpa unavailable: explicit math' "${OUT_DIR}/attn_${name}_sdpa.log" 2>/dev/null |
        sed 's/^sdpa backend //') || true
  echo "[$name] attention ms: moelab $am, sdpa $as (${abk:-?}), sdpa v padded $ap"
  aratio="-"
  if is_number "$am" && is_number "$as"; then
    aratio=$(awk -v a="$am" -v b="$as" 'BEGIN { if (a > 0) printf "%.2fx", b / a; else print "-" }')
  fi
  ATTN_ROWS+=("| $name | $am | $as | $aratio | $ap | ${abk:--} |")

  # Same B x T everywhere? (moelab: "batch B x seq T"; bench_torch.py: "B B  T T")
  mbt=$(grep -m1 -oE 'batch [0-9]+ x seq [0-9]+' "${base}_moelab.log" 2>/dev/null | awk '{print $2"x"$5}') || true
  for peer in twin_eager twin_compile hf; do
    tbt=$(grep -m1 -oE '^  B [0-9]+  T [0-9]+' "${base}_${peer}.log" 2>/dev/null | awk '{print $2"x"$4}') || true
    if [[ -n $mbt && -n $tbt && $mbt != "$tbt" ]]; then
      NOTES+=("note: $name: moelab ran B x T = $mbt but $peer ran $tbt")
    fi
  done
done

{
  echo
  mode=$DTYPE
  [[ $DTYPE == bfloat16 ]] && mode="bf16 autocast with fp32 master weights"
  echo "Training tokens/s, device $DEVICE, $STEPS timed steps after $WARMUP warm-up; torch peers in $mode." \
       "Logs: $OUT_DIR/bench_<preset>_*.log"
  echo
  echo "| preset | moelab tok/s | twin eager | twin compile | HF | moelab / compile | moelab MFU line |"
  echo "|---|---|---|---|---|---|---|"
  printf '%s\n' "${ROWS[@]}"
  echo
  echo "attention fwd+bwd: one layer's causal attention forward + backward, ms per step (mean of $STEPS after $WARMUP" \
       "warm-up), torch in $DTYPE tensors. Logs: $OUT_DIR/attn_<preset>_*.log"
  echo
  echo "| preset | moelab ms | sdpa ms | ratio (sdpa / moelab, > 1 = moelab faster) | sdpa v padded to Dqk ms | sdpa backend |"
  echo "|---|---|---|---|---|---|"
  printf '%s\n' "${ATTN_ROWS[@]}"
  [[ ${#NOTES[@]} -eq 0 ]] || { echo; printf '%s\n' "${NOTES[@]}"; }
} | tee "$OUT_DIR/summary.md"
