#!/usr/bin/env bash
# `moelab train` end to end through the command line, on the char-level tinyshakespeare shards of
# the cli.prepare_char fixture: a short run, a run stopped by a real SIGINT (it must finish the
# step, save a checkpoint and exit 0) and resumed, `moelab eval` (the same val loss as the trainer's
# last evaluation), `moelab check`, a sample, an export, the run directory's guards, and the plots.
#   cli_train_test.sh MOELAB PREPARED_DIR WORK_DIR SOURCE_DIR
set -euo pipefail
moelab=$1 data=$2 work=$3 src=$4
rm -rf "$work" && mkdir -p "$work"
common=(--config "$src/examples/tiny.toml" --set model.vocab_size=96 --set "train.data_dir=$data"
        --set train.eval_every=10 --set train.eval_batches=2 --set train.log_every=5)

"$moelab" train "${common[@]}" --set train.steps=30 --set "train.out_dir=$work/a" > "$work/a.log"
grep -q "done: step 30" "$work/a.log" || { cat "$work/a.log"; echo "FAIL: the short run did not finish"; exit 1; }

# A run far too long to finish, interrupted as soon as it has logged a step.
"$moelab" train "${common[@]}" --set train.steps=1000000 --set "train.out_dir=$work/b" > "$work/b.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do grep -q '"step"' "$work/b/metrics.jsonl" 2>/dev/null && break; sleep 0.1; done
kill -INT "$pid"
status=0; wait "$pid" || status=$?
[ "$status" -eq 0 ] || { cat "$work/b.log"; echo "FAIL: SIGINT exit status $status, expected 0"; exit 1; }
grep -q "stop requested: saving after step" "$work/b.log" || { cat "$work/b.log"; echo "FAIL: no save on SIGINT"; exit 1; }
ckpt=$(ls -d "$work"/b/step_* | tail -1)
[ -f "$ckpt/trainer_state.json" ] || { echo "FAIL: no complete checkpoint after SIGINT"; exit 1; }
saved=$((10#$(basename "$ckpt" | sed 's/step_//')))
"$moelab" train "${common[@]}" --set train.steps=$((saved + 3)) --set "train.out_dir=$work/b" --resume > "$work/b2.log"
grep -q "resumed from" "$work/b2.log" && grep -q "done: step $((saved + 3))" "$work/b2.log" \
  || { cat "$work/b2.log"; echo "FAIL: resume"; exit 1; }

# eval runs the trainer's evaluation on the same windows: the same number, to the printed digits.
"$moelab" eval --ckpt "$work/a" > "$work/eval.log"
trained=$(grep -o "done: step 30, train loss [0-9.]* (total [0-9.]*), val loss [0-9.]*" "$work/a.log" | grep -o "[0-9.]*$")
grep -q "val loss $trained " "$work/eval.log" \
  || { cat "$work/eval.log"; echo "FAIL: eval gives another val loss than the trainer's ($trained)"; exit 1; }

"$moelab" sample --ckpt "$work/a" --prompt "ROMEO:" --max-new-tokens 20 --seed 1 | tee "$work/sample.txt"
grep -q "KV cache:" "$work/sample.txt" || { echo "FAIL: sample"; exit 1; }
"$moelab" check --ckpt "$work/a" | tee "$work/check.txt"
grep -q "model.safetensors: [0-9]* bytes, SHA-256 as saved" "$work/check.txt" && grep -q ": OK" "$work/check.txt" \
  || { echo "FAIL: moelab check"; exit 1; }
"$moelab" export --ckpt "$work/a" --out "$work/hf" > /dev/null
[ -f "$work/hf/config.json" ] && [ -f "$work/hf/model.safetensors" ] || { echo "FAIL: export"; exit 1; }

# The run directory's guards: a second fresh run into a used directory is refused, naming the flags;
# --overwrite starts over; inference needs no optimizer file.
if "$moelab" train "${common[@]}" --set train.steps=2 --set "train.out_dir=$work/a" > "$work/guard.log" 2>&1; then
  echo "FAIL: a fresh run into a directory holding a run was not refused"; exit 1
fi
grep -q "already holds a run (checkpoint step_00000030): pass --resume" "$work/guard.log" \
  || { cat "$work/guard.log"; echo "FAIL: guard message"; exit 1; }
cp -r "$work/a" "$work/a_copy"
"$moelab" train "${common[@]}" --set train.steps=2 --set "train.out_dir=$work/a_copy" --overwrite > "$work/over.log"
[ ! -d "$work/a_copy/step_00000030" ] && [ -d "$work/a_copy/step_00000002" ] \
  || { ls "$work/a_copy"; echo "FAIL: --overwrite"; exit 1; }
rm "$work/a_copy/step_00000002/optimizer.safetensors"
"$moelab" sample --ckpt "$work/a_copy" --prompt "A" --max-new-tokens 5 --seed 1 > /dev/null \
  || { echo "FAIL: sample needs no optimizer file"; exit 1; }

if /usr/bin/python3 -c "import matplotlib, numpy" 2>/dev/null; then
  /usr/bin/python3 "$src/examples/plot.py" "$work/a"
  [ -s "$work/a/loss.png" ] && [ -s "$work/a/expert_load.png" ] || { echo "FAIL: plots"; exit 1; }
else
  echo "(matplotlib missing: plots not checked)"
fi
echo "cli train test: OK"
