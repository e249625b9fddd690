#!/usr/bin/env bash
# The command line on the GPU (label gpu; exit 77 = skipped without one): train a few steps with
# --device cuda (bf16 mixed precision), evaluate the checkpoint on the GPU and on the CPU (the
# same model, so the two val losses must agree to bf16 accuracy), sample on the GPU, and bench.
#   cli_cuda_test.sh MOELAB PREPARED_DIR WORK_DIR SOURCE_DIR
set -euo pipefail
moelab=$1 data=$2 work=$3 src=$4
"$moelab" info | grep -q "^GPUs: [1-9]" || { echo "no GPU: skipped"; exit 77; }
rm -rf "$work" && mkdir -p "$work"
"$moelab" train --config "$src/examples/tiny.toml" --set model.vocab_size=96 --set "train.data_dir=$data" \
  --set train.steps=40 --set train.eval_every=20 --set train.eval_batches=2 --set "train.out_dir=$work/run" \
  --device cuda > "$work/train.log"
grep -q "done: step 40" "$work/train.log" || { cat "$work/train.log"; echo "FAIL: cuda train"; exit 1; }
gpu=$("$moelab" eval --ckpt "$work/run" --device cuda | grep -o "^val loss [0-9.]*" | grep -o "[0-9.]*$")
cpu=$("$moelab" eval --ckpt "$work/run" --device cpu | grep -o "^val loss [0-9.]*" | grep -o "[0-9.]*$")
python3 -c "import sys; g, c = $gpu, $cpu; sys.exit(0 if abs(g - c) <= 2e-2 * c else 1)" \
  || { echo "FAIL: val loss cuda $gpu vs cpu $cpu"; exit 1; }
"$moelab" sample --ckpt "$work/run" --prompt "ROMEO:" --max-new-tokens 20 --device cuda > "$work/sample.txt"
grep -q "KV cache:" "$work/sample.txt" || { cat "$work/sample.txt"; echo "FAIL: cuda sample"; exit 1; }
"$moelab" bench --config "$src/examples/tiny.toml" --device cuda --steps 3 --warmup 1 | tee "$work/bench.txt"
grep -q "moelab tokens/s: [0-9]" "$work/bench.txt" || { echo "FAIL: cuda bench"; exit 1; }
"$moelab" bench --kernel attention --config "$src/examples/tiny.toml" --device cuda --steps 2 --warmup 1 \
  | grep "moelab attention ms: [0-9]" || { echo "FAIL: cuda attention bench"; exit 1; }
echo "cli cuda test: OK (val loss cuda $gpu, cpu $cpu)"
