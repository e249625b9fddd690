#!/usr/bin/env bash
# peer_venv.sh: create (or bring up to date) .venv-peer/, a Python virtual environment with a
# current PyTorch from PyPI, numpy and what tests/reference/bench_torch.py needs, for the
# "current peer" of the CPU speed comparison (scripts/bench_peers.py). Debian 12's python3-torch
# (1.13, no torch.compile) stays the twin of the tests; this venv is only for benchmarks.
#
#     scripts/peer_venv.sh            # create it, or check it and do nothing more
#     scripts/peer_venv.sh --upgrade  # upgrade torch and numpy to PyPI's newest
#     PEER_TORCH='torch==2.15.0' scripts/peer_venv.sh   # pin a version (any pip requirement)
#
# Uses the python3 on PATH (3.11 or newer, so tomllib is in the standard library), else
# PEER_PYTHON. PyPI's Linux x86_64 torch wheel is the CUDA build: it pulls the nvidia-* packages
# (some GiB), which is fine: it runs on the CPU without a GPU. Not called from CI.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-peer"
PY="${PEER_PYTHON:-python3}"
TORCH_REQ="${PEER_TORCH:-torch}"
UPGRADE=0
for a in "$@"; do
  case "$a" in
    --upgrade) UPGRADE=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "peer_venv.sh: unknown argument $a (--upgrade, --help)" >&2; exit 2 ;;
  esac
done

if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
  echo "peer_venv.sh: $PY is not Python >= 3.11 ($("$PY" --version 2>&1 || echo missing));" \
       "set PEER_PYTHON" >&2
  exit 2
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "peer_venv.sh: creating $VENV with $("$PY" --version 2>&1) ($(command -v "$PY"))"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

have() {  # torch and numpy import, and compile exists
  "$VENV/bin/python" -c 'import torch, numpy; assert hasattr(torch, "compile")' 2>/dev/null
}

if [[ $UPGRADE == 1 ]] || ! have || [[ -n "${PEER_TORCH:-}" ]]; then
  # --no-cache-dir: the CUDA wheels are large; a second copy in ~/.cache/pip is of no use.
  "$VENV/bin/python" -m pip install --no-cache-dir $([[ $UPGRADE == 1 ]] && echo --upgrade) \
    "$TORCH_REQ" numpy
fi

"$VENV/bin/python" - <<'EOF'
import sys, torch, numpy
print(f"peer venv: python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}, "
      f"threads {torch.get_num_threads()}, cuda build {torch.version.cuda or 'none'}")
EOF
echo "peer venv: $VENV ($(du -sh "$VENV" 2>/dev/null | cut -f1))"
