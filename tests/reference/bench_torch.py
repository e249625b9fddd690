"""bench_torch.py: train the PyTorch twin (twin.py) on a config and report its training speed,
to put moelab's own numbers next to PyTorch's on the same machine and thread count.

    /usr/bin/python3 tests/reference/bench_torch.py --config examples/<preset>.toml --threads 8
    /usr/bin/python3 tests/reference/bench_torch.py --batch-size 8 --seq-len 128 --steps 20
    /usr/bin/python3 tests/reference/bench_torch.py --device cuda [--compile]

A step is what moelab's trainer does: forward (main model + MTP), backward, global-norm clipping
to 1.0, AdamW (betas 0.9/0.95, weight decay 0.1 except norms/embeddings), aux-free bias update.
Batches are fresh random tokens. Prints one line `torch tokens/s: X  ms/step: Y` (tokens = B*T
per step, the trained positions) followed by details.

--config takes moelab's TOML presets (ModelConfig field names, at the top level or in tables
such as [model]; batch_size / seq_len / steps found in any table are used as defaults) or JSON
(a flat ModelConfig object, or one with a "model" or "config" object). Without --config the
ModelConfig defaults are used. --threads defaults to OMP_NUM_THREADS, else every CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _pin_blas_threads() -> None:
    """Debian's torch calls the system BLAS (libblas.so.3: OpenBLAS when libopenblas0 is installed,
    else the ~5 GFLOP/s reference BLAS). OpenBLAS keeps its own thread pool, which torch's
    set_num_threads does not reach: pin it to --threads before torch loads it, so that the peer
    runs on exactly the threads moelab gets."""
    for i, a in enumerate(sys.argv):
        value = a.split("=", 1)[1] if a.startswith("--threads=") else (
            sys.argv[i + 1] if a == "--threads" and i + 1 < len(sys.argv) else None)
        if value:
            os.environ["OPENBLAS_NUM_THREADS"] = value
            os.environ.setdefault("OMP_NUM_THREADS", value)


_pin_blas_threads()
import torch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from twin import (ModelConfig, Twin, bias_update, clip_grad_norm, init_weights,  # noqa: E402
                  make_adamw, set_moe_mode, train_step)

BENCH_KEYS = ("batch_size", "seq_len", "steps", "warmup")


# ---- config files ----

def _parse_toml_value(text: str):
    t = text.strip()
    if t.startswith(("'", '"')):
        q = t[0]
        end = t.index(q, 1)
        return t[1:end]
    t = t.split("#", 1)[0].strip()
    if t in ("true", "false"):
        return t == "true"
    if t.startswith("["):
        inner = t.strip("[]").strip()
        return [_parse_toml_value(x) for x in inner.split(",") if x.strip()] if inner else []
    try:
        return int(t.replace("_", ""))
    except ValueError:
        return float(t.replace("_", ""))


def _tiny_toml(text: str) -> dict:
    """`key = value` lines and [section] headers (enough for moelab's presets)."""
    root: dict = {}
    table = root
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            table = root
            for part in line.strip("[]").strip().split("."):
                table = table.setdefault(part.strip(), {})
            continue
        key, _, value = line.partition("=")
        table[key.strip().strip('"')] = _parse_toml_value(value)
    return root


def load_toml(path: str) -> dict:
    try:
        import tomllib  # Python 3.11+
        with open(path, "rb") as f:
            return tomllib.load(f)
    except ImportError:
        with open(path, "r", encoding="utf-8") as f:
            return _tiny_toml(f.read())


def _walk(tree: dict, path=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _walk(v, path + (k,))
        else:
            yield path, k, v


def read_config(path: str):
    """-> (ModelConfig, {batch_size, seq_len, steps, warmup found in the file})."""
    if path.endswith(".json"):
        with open(path, "r", encoding="utf-8") as f:
            tree = json.load(f)
        for key in ("model", "config"):
            if isinstance(tree.get(key), dict):
                tree = {**{k: v for k, v in tree.items() if k != key}, **tree[key]}
    else:
        tree = load_toml(path)
    fields = set(ModelConfig.field_names())
    model_keys, bench = {}, {}
    for where, k, v in _walk(tree):
        if k in fields:
            if k in model_keys and model_keys[k] != v:
                raise ValueError(f"{path}: {k} given twice ({model_keys[k]!r} and {v!r})")
            model_keys[k] = v
        elif k in BENCH_KEYS:
            bench[k] = v
    return ModelConfig.from_dict(model_keys), bench


# ---- counting ----

def count_params(model: Twin):
    cfg = model.cfg
    total = sum(p.numel() for p in model.parameters())
    # active per token in the main model: everything but the routed experts not chosen, the MTP
    # modules and the embedding table (a lookup), plus K routed experts per MoE layer
    active = 0
    for n, p in model.named_parameters():
        if "embed_tokens" in n and not cfg.tie_word_embeddings:
            continue
        if n.startswith("model.layers."):
            idx = int(n.split(".")[2])
            if idx >= cfg.num_hidden_layers:
                continue
            if ".mlp.experts." in n:
                e = int(n.split(".")[5])
                if e >= cfg.num_experts_per_tok:  # count K experts' worth
                    continue
        active += p.numel()
    return total, active


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", help="moelab TOML preset or JSON ModelConfig")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: OMP_NUM_THREADS, else all CPUs)")
    ap.add_argument("--batch-size", type=int, default=None, help="B (default: config file, else 8)")
    ap.add_argument("--seq-len", type=int, default=None, help="T (default: config file, else 128)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"],
                    help="parameter/activation dtype (router, losses stay >= fp32)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dispatch", default="sorted", choices=["sorted", "loop"],
                    help="MoE dispatch: sorted (one host sync per layer) or the reference loop")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (torch >= 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg, from_file = (read_config(args.config) if args.config else (ModelConfig(), {}))
    B = args.batch_size or int(from_file.get("batch_size", 8))
    T = args.seq_len or int(from_file.get("seq_len", 128))
    steps = args.steps if args.steps is not None else int(from_file.get("steps", 10))
    warmup = args.warmup if args.warmup is not None else int(from_file.get("warmup", 2))
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0) or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if T > cfg.max_position_embeddings:
        print(f"note: seq_len {T} > max_position_embeddings {cfg.max_position_embeddings}")
    dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)

    gen = torch.Generator().manual_seed(args.seed)
    model = Twin(cfg)
    init_weights(model, gen, f32_exact=False)
    model = model.to(device=device, dtype=dtype)
    set_moe_mode(model, args.dispatch, track_margins=False)
    opt = make_adamw(model, lr=args.lr)
    runner = model
    if args.compile:
        if not hasattr(torch, "compile"):
            print(f"error: --compile needs torch >= 2.0 (this is torch {torch.__version__})",
                  file=sys.stderr)
            return 2
        runner = torch.compile(model)

    Dm = cfg.num_nextn_predict_layers
    n_batches = warmup + steps
    batches = torch.randint(0, cfg.vocab_size, (n_batches, B, T + 1 + Dm), generator=gen).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    losses = []
    t0 = None
    for i in range(n_batches):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        if runner is model:
            out = train_step(model, opt, batches[i])
        else:  # compiled forward, same step otherwise
            opt.zero_grad(set_to_none=True)
            out = runner(batches[i])
            out["loss_total"].backward()
            clip_grad_norm(list(model.parameters()), 1.0)
            opt.step()
            bias_update(model, {l: r["load"] for l, r in out["router"].items()})
        losses.append(out["loss_total"].detach())
    sync()
    elapsed = time.perf_counter() - (t0 if t0 is not None else time.perf_counter())
    losses = [float(l) for l in losses]

    total, active = count_params(model)
    if steps > 0:
        ms = 1000.0 * elapsed / steps
        tps = B * T * steps / elapsed
        print(f"torch tokens/s: {tps:.1f}  ms/step: {ms:.2f}")
    else:
        print("torch tokens/s: n/a  ms/step: n/a  (--steps 0)")
    print(f"  torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
          + f", threads {torch.get_num_threads()}, dtype {args.dtype}, "
          f"{'compiled' if args.compile else 'eager'}, MoE dispatch {args.dispatch}")
    print(f"  B {B}  T {T}  steps {steps} (+{warmup} warmup)  tokens/step {B * T}")
    print(f"  attention {cfg.attention}, ffn {cfg.ffn}, L {cfg.num_hidden_layers}, D {cfg.hidden_size}, "
          f"V {cfg.vocab_size}, MTP {Dm}" + (f", E {cfg.n_routed_experts} K {cfg.num_experts_per_tok}"
                                          if cfg.ffn == "moe" else ""))
    print(f"  parameters {total:,} (active per token, main model, no embedding lookup: {active:,})")
    print(f"  loss first {losses[0]:.4f}  last {losses[-1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
