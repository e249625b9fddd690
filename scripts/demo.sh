#!/usr/bin/env bash
# The README's main command: set up, then watch a DeepSeek-style MoE learn Shakespeare on the CPU.
#   1. install what is missing, configure and build the moelab command alone into build-demo/
#      (scripts/setup.sh; without the CUDA kernels when this machine has no GPU)
#   2. prepare tinyshakespeare at the character level (../shared/data when present, else the
#      standard file from the char-rnn repository)
#   3. train examples/shakespeare_moe.toml (MLA + 16 fine-grained experts + 1 shared, aux-loss-free
#      balancing, MTP), evaluating on the held-out last 10% as it goes (~8 minutes on 2 cores)
#   4. print a sample from the trained model, the time taken and the final losses
#   5. write the plots (runs/shakespeare_moe/loss.png, expert_load.png)
# Extra arguments go to `moelab train`, e.g. scripts/demo.sh --set train.steps=500
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
moelab_install_debs python3-matplotlib
# The demo trains on the CPU: no tests, and the CUDA kernels only where a GPU could use them.
cuda=OFF
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then cuda=AUTO; fi
MOELAB_BUILD_TARGETS=moelab moelab_build "$MOELAB_ROOT/build-demo" -DMOELAB_CUDA=$cuda
moelab="$MOELAB_ROOT/build-demo/train/moelab"
cd "$MOELAB_ROOT"

corpus="$MOELAB_ROOT/../shared/data/tinyshakespeare.txt"
if [ ! -f "$corpus" ]; then
  corpus="$MOELAB_ROOT/runs/tinyshakespeare.txt"
  if [ ! -f "$corpus" ]; then
    url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
    mkdir -p "$MOELAB_ROOT/runs"
    echo "demo: downloading tinyshakespeare from the char-rnn repository"
    if ! curl -fsSL --retry 2 -o "$corpus.part" "$url"; then
      rm -f "$corpus.part"
      echo "demo: cannot download $url (offline?). Put the file at $corpus and run again." >&2
      exit 1
    fi
    mv "$corpus.part" "$corpus"
  fi
fi

start=$(date +%s)
"$moelab" prepare --input "$corpus" --tokenizer char --val-fraction 0.1 --out runs/shakespeare_char
# A second demo starts over (--overwrite) unless asked to continue (--resume, --resume-if-present).
case " $* " in *" --resume"*) fresh=() ;; *) fresh=(--overwrite) ;; esac
"$moelab" train --config examples/shakespeare_moe.toml "${fresh[@]}" "$@"
trained=$(date +%s)

echo
echo "=== a sample from the trained model ==="
"$moelab" sample --ckpt runs/shakespeare_moe --prompt "ROMEO:" --max-new-tokens 240 --temperature 0.8 --top-k 40 --seed 1
echo
/usr/bin/python3 examples/plot.py runs/shakespeare_moe  # Debian's python3-matplotlib
echo "demo: training took $((trained - start)) s; total $(( $(date +%s) - start )) s"
