"""bench_torch.py: train a PyTorch peer on a config and report its training speed, to put
moelab's own numbers next to PyTorch's on the same machine and thread count.

    /usr/bin/python3 tests/reference/bench_torch.py --config examples/<preset>.toml --threads 8
    /usr/bin/python3 tests/reference/bench_torch.py --batch-size 8 --seq-len 128 --steps 20
    python3 tests/reference/bench_torch.py --device cuda --dtype bfloat16 [--compile] [--peer hf]

Peers (--peer):
  twin  the PyTorch twin (twin.py), the default. A step is what moelab's trainer does: forward
        (main model + MTP), backward, global-norm clipping to 1.0, AdamW (betas 0.9/0.95,
        weight decay 0.1 except norms/embeddings), aux-free bias update.
  hf    Hugging Face transformers' DeepseekV3ForCausalLM with the same shapes (the config is mapped
        to HF's keys as train/export.cpp writes config.json; MLA configs only, exit 2 otherwise).
        Step: forward, cross-entropy on the B*T next tokens, backward, clip_grad_norm_(1.0), AdamW
        (same groups and hyper-parameters). HF's model has no MTP module, no balance loss and no
        bias update, and its router always scores with sigmoid: it runs HF's code as shipped.
        Needs transformers with DeepseekV3 (>= 4.51); exits 77 (skipped) when it is missing.
Batches are fresh random tokens. Prints one line `torch tokens/s: X  ms/step: Y` (tokens = B*T
per step, the trained positions) followed by details (the first names the peer).

Precision (--dtype):
  auto      float32 on the CPU, bfloat16 on CUDA (moelab's --precision auto).
  float32 / float64
            parameters, activations and optimizer in that dtype (router, losses stay >= fp32).
  bfloat16  mixed precision as moelab's bf16 mode: fp32 master weights, gradients and AdamW;
            the forward under torch.autocast(bfloat16), so matmuls and attention run in bf16 with
            fp32 accumulation while norms' reductions, softmax and the losses stay in fp32. The
            twin's router GEMM runs outside autocast in fp32 (as moelab's router does); HF's router
            runs as HF wrote it (under autocast its F.linear runs in bf16).
  Both peers use the same mode; the details line says which.

--config takes moelab's TOML presets (ModelConfig field names, at the top level or in tables
such as [model]; batch_size / seq_len / steps found in any table are used as defaults) or JSON
(a flat ModelConfig object, or one with a "model" or "config" object). Without --config the
ModelConfig defaults are used. --threads defaults to OMP_NUM_THREADS, else every CPU.
Exit codes: 0 ok, 2 usage or unsupported combination, 77 peer not available here (skipped).

--compile (torch >= 2): torch.compile(model), default inductor. The warm-up is at least 3 steps,
then goes on, on fresh random batches, until --compile-settle (3) steps in a row compiled nothing
(at most --compile-max-warmup steps in all): the sorted MoE dispatch makes dynamo recompile as the
per-expert counts change, until the frame reaches dynamo's recompile limit and runs eager. Two
`  compile:` detail lines then count the compilations (first compiles, recompiles, lazy backward
compiles, seconds) of the warm-up and of the timed steps, the graphs and the graph breaks.

--kernel attention: instead of a training step, one layer's causal attention forward + backward on
the config's shapes, the peer of `moelab bench --kernel attention`. q [B, H, T, Dqk], k [B, Hkv, T,
Dqk], v [B, Hkv, T, Dv] (MLA: Dqk = qk_nope + qk_rope, Dv = v_head_dim, Hkv = H; MHA/GQA: Dqk = Dv =
hidden_size / H, Hkv = kv_heads()), scale 1/sqrt(Dqk), random normal inputs and grad_out as real
tensors of the dtype (auto: bf16 on CUDA, fp32 on the CPU; no autocast here). A step: forward
F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale), then torch.autograd.grad for
q, k, v; each timed separately between synchronizations, averaged over the timed steps. torch picks
its backend (the details say which ran: flash needs Dqk == Dv, so MLA shapes fall to another one;
on CUDA with Dqk != Dv a second line times v zero-padded to Dqk). Without sdpa (torch < 2.0) an
explicit causal softmax(q k^T) v. FLOPs as moelab's attention_flops_per_token: causal half of
2 B H T^2 (Dqk + Dv) forward, x3 for forward + backward. Prints
`torch attention ms: X (forward F, backward B)  GFLOP/s: G`, X = F + B, then details.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import types


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

import twin as twin_module  # noqa: E402
from twin import (ModelConfig, Twin, bias_update, clip_grad_norm, init_weights,  # noqa: E402
                  make_adamw, no_weight_decay, set_moe_mode)

COMPILE_WARMUP = 3  # the least default warm-up under --compile (an explicit --warmup wins)
SKIP = 77  # the exit code of a peer that is not available here (ctest's and automake's "skipped")

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

def count_params(model: torch.nn.Module, cfg: ModelConfig):
    """-> (total, active per token in the main model). Active: everything but the routed experts
    not chosen, the MTP modules and the embedding table (a lookup); each MoE layer counts K of its
    E routed experts (K/E of the routed-expert tensors, which also covers HF's fused layouts)."""
    total = sum(p.numel() for p in model.parameters())
    E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
    active = 0.0
    for n, p in model.named_parameters():
        if "embed_tokens" in n and not cfg.tie_word_embeddings:
            continue
        parts = n.split(".")
        if n.startswith("model.layers.") and int(parts[2]) >= cfg.num_hidden_layers:
            continue  # MTP module (twin only; HF builds none)
        if ".mlp.experts." in n:
            active += p.numel() * K / E
            continue
        active += p.numel()
    return total, int(round(active))


# ---- precision ----

def resolve_dtype(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    return name


def amp_context(dtype_name: str, device: torch.device):
    """The forward's context: autocast(bfloat16) for the mixed mode, else nothing."""
    if dtype_name == "bfloat16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def fp32_router_under_autocast(cfg: ModelConfig, device_type: str) -> bool:
    """Runs the twin's router GEMM (its only F.linear with an E x D weight) outside autocast, in
    fp32 as moelab does. twin.py calls F.linear directly in two places, the router and the LM head
    (V x D); the twin module's `F` becomes a copy of torch.nn.functional whose linear tells them
    apart by the weight's shape. Returns False (router left to autocast) when E == V."""
    if cfg.ffn != "moe" or cfg.n_routed_experts == cfg.vocab_size:
        return False
    E, D = cfg.n_routed_experts, cfg.hidden_size
    functional = torch.nn.functional

    def linear(x, w, b=None):
        if w.dim() == 2 and w.shape[0] == E and w.shape[1] == D:
            with torch.autocast(device_type=device_type, enabled=False):
                return functional.linear(x.float(), w.float(), None if b is None else b.float())
        return functional.linear(x, w, b)

    ns = types.ModuleType("twin_functional")
    ns.__dict__.update({k: v for k, v in vars(functional).items() if not k.startswith("__")})
    ns.linear = linear
    twin_module.F = ns
    return True


# ---- peers ----

def hf_config_dict(cfg: ModelConfig) -> dict:
    """ModelConfig -> the keys of HF's DeepseekV3Config, as hf_config_json in train/export.cpp."""
    seq = cfg.seq_aux_loss_alpha > 0
    return dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_nextn_predict_layers=cfg.num_nextn_predict_layers,
        max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta, rope_scaling=None, rope_interleave=True,
        tie_word_embeddings=cfg.tie_word_embeddings, initializer_range=cfg.initializer_range,
        hidden_act="silu", use_cache=False, attention_bias=False, attention_dropout=0.0,
        pretraining_tp=1,
        num_attention_heads=cfg.num_attention_heads, num_key_value_heads=cfg.kv_heads(),
        q_lora_rank=cfg.q_lora_rank if cfg.q_lora_rank > 0 else None,
        kv_lora_rank=cfg.kv_lora_rank, qk_nope_head_dim=cfg.qk_nope_head_dim,
        qk_rope_head_dim=cfg.qk_rope_head_dim, v_head_dim=cfg.v_head_dim,
        intermediate_size=cfg.intermediate_size,
        first_k_dense_replace=(cfg.num_hidden_layers if cfg.ffn == "dense"
                               else cfg.first_k_dense_replace),
        moe_layer_freq=1, ep_size=1, moe_intermediate_size=cfg.moe_intermediate_size,
        n_routed_experts=cfg.n_routed_experts, n_shared_experts=cfg.n_shared_experts,
        num_experts_per_tok=cfg.num_experts_per_tok, scoring_func=cfg.scoring_func,
        topk_method=("noaux_tc" if cfg.aux_free_bias
                     else "group_limited_greedy" if cfg.n_group > 1 else "greedy"),
        n_group=cfg.n_group, topk_group=cfg.topk_group, norm_topk_prob=cfg.norm_topk_prob,
        routed_scaling_factor=cfg.routed_scaling_factor, seq_aux=seq,
        aux_loss_alpha=cfg.seq_aux_loss_alpha if seq else cfg.aux_loss_alpha,
        bos_token_id=None, eos_token_id=None, pad_token_id=None)


def import_hf():
    """-> (DeepseekV3Config, DeepseekV3ForCausalLM, version) or a reason string."""
    try:
        import transformers
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
    except Exception as e:  # missing, too old, or incompatible with this torch
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"{type(e).__name__}: {first}"
    # A transformers that finds this torch too old imports placeholder classes that fail later.
    if not transformers.utils.is_torch_available():
        return f"transformers {transformers.__version__} does not support this torch"
    return DeepseekV3Config, DeepseekV3ForCausalLM, transformers.__version__


def build_hf(cfg: ModelConfig, classes, attn: str | None, experts: str | None):
    Config, Model, _ = classes
    extra = {}
    if attn:
        extra["attn_implementation"] = attn
    if experts:
        extra["experts_implementation"] = experts
    hf_cfg = Config(**hf_config_dict(cfg), **extra)
    model = Model(hf_cfg)
    model.train()
    return model


def make_adamw_named(model: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    """twin.make_adamw's groups for any module: no decay on norms, embeddings, biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if no_weight_decay(name) else decay).append(p)
    return torch.optim.AdamW([dict(params=decay, weight_decay=0.1),
                              dict(params=no_decay, weight_decay=0.0)],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)


# ---- torch.compile's work (--compile) ----

class CompileWatch:
    """What torch.compile did, so that the timed steps can be shown to hold no compilation.

    Dynamo runs the start/end callbacks of torch._dynamo.callback once per compilation: trigger
    DYNAMO when it traces a frame (inductor lowers the forward graphs inside it), with compile id
    "frame/n", n > 0 for the n-th recompile of that frame; LAZY_BACKWARD when AOTAutograd compiles
    a backward graph at its first call. Each event is stamped with the step it fell in. Graph
    counts and graph-break reasons come from torch._dynamo.utils.counters. Every part is
    optional: what this torch lacks is reported as unknown."""

    def __init__(self):
        self.step = -1
        self.events = []   # (step, trigger, n of "frame/n" or None, seconds)
        self.hooked = False
        self._start = None
        try:
            from torch._dynamo.utils import counters
            self.counters = counters
        except Exception:
            self.counters = None
        try:
            handler = torch._dynamo.callback.callback_handler
            handler.register_start_callback(self._on_start)
            handler.register_end_callback(self._on_end)
            self.hooked = True
        except Exception:
            pass

    @staticmethod
    def _describe(args):
        if not args or not hasattr(args[0], "compile_id"):  # older torch: callbacks take nothing
            return "DYNAMO", None
        a = args[0]
        trigger = getattr(getattr(a, "callback_trigger", None), "name", "DYNAMO")
        try:
            n = int(str(a.compile_id).split("/")[-1].split("_")[0])
        except ValueError:
            n = None
        return trigger, n

    def _on_start(self, *args):
        self._start = time.perf_counter()

    def _on_end(self, *args):
        trigger, n = self._describe(args)
        seconds = time.perf_counter() - self._start if self._start is not None else 0.0
        self.events.append((self.step, trigger, n, seconds))
        self._start = None

    def in_steps(self, lo: int, hi: int):
        return [e for e in self.events if lo <= e[0] < hi]

    def summary(self, lo: int, hi: int) -> str:
        """The compilations in steps [lo, hi)."""
        if not self.hooked:
            return "unknown (no torch._dynamo.callback in this torch)"
        ev = self.in_steps(lo, hi)
        dyn = [e for e in ev if e[1] == "DYNAMO"]
        recompiles = sum(1 for e in dyn if e[2])
        backward = sum(1 for e in ev if e[1] == "LAZY_BACKWARD")
        return (f"{len(ev)} ({len(dyn) - recompiles} first compiles, {recompiles} recompiles, "
                f"{backward} backward; {sum(e[3] for e in ev):.1f} s)")

    def per_step(self, lo: int, hi: int) -> str:
        steps = sorted({e[0] for e in self.in_steps(lo, hi)})
        return ", ".join(f"{s}: {len(self.in_steps(s, s + 1))}" for s in steps) or "none"

    def counts(self) -> str:
        c = self.counters
        if c is None:
            return "dynamo counters unavailable"
        frames, breaks = c["frames"], c["graph_break"]
        reasons = []
        for reason, n in breaks.items():
            text = str(reason)
            op = text.split("`")[1] if text.count("`") >= 2 else None
            reasons.append(f"{text.splitlines()[0].strip()}{f' {op}' if op else ''} x{n}")
        return (f"graphs {c['stats'].get('unique_graphs', 0)}, frames compiled "
                f"{frames.get('ok', 0)} of {frames.get('total', 0)}, graph breaks "
                f"{sum(breaks.values())}" + (f" ({'; '.join(reasons)})" if reasons else ""))


# ---- attention microbenchmark (--kernel attention) ----

def _has_sdpa() -> bool:
    return hasattr(torch.nn.functional, "scaled_dot_product_attention")


def _sdpa_takes(device: torch.device, **kwargs) -> bool:
    """Whether this torch's sdpa takes kwargs (scale: torch 2.1, enable_gqa: 2.5), tried on a tiny
    problem."""
    try:
        q = torch.zeros(1, 2, 2, 4, device=device)
        kv = torch.zeros(1, 1 if kwargs.get("enable_gqa") else 2, 2, 4, device=device)
        torch.nn.functional.scaled_dot_product_attention(q, kv, kv, is_causal=True, **kwargs)
        return True
    except (TypeError, RuntimeError):
        return False


def explicit_causal_attention(q, k, v, scale):
    """softmax(q k^T * scale, causal) v on [B, H, T, D] (k, v already with H heads)."""
    T = q.shape[-2]
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    p = torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return torch.matmul(p, v)


_SDPA_OPS = (("flash", "_scaled_dot_product_flash_attention"),
             ("efficient", "_scaled_dot_product_efficient_attention"),
             ("cudnn", "_scaled_dot_product_cudnn_attention"),
             ("math", "_scaled_dot_product_attention_math"))


def sdpa_backend_used(fn) -> str:
    """Which sdpa backend fn() dispatched to, from the aten op names the profiler records."""
    try:
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        names = {e.key for e in prof.key_averages()}
    except Exception as e:  # profiler unavailable: say so rather than fail the bench
        return f"unknown ({type(e).__name__})"
    for label, op in _SDPA_OPS:
        if any(op in n for n in names):
            return label
    return "unknown"


def sdpa_backends_enabled(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    b = torch.backends.cuda
    flags = []
    for name in ("flash", "mem_efficient", "cudnn", "math"):
        f = getattr(b, f"{name}_sdp_enabled", None)
        if f is not None:
            flags.append(f"{name} {'on' if f() else 'off'}")
    return ", ".join(flags)


def attention_bench(cfg: ModelConfig, B: int, T: int, steps: int, warmup: int,
                    device: torch.device, dtype_name: str, seed: int) -> int:
    H = cfg.num_attention_heads
    if cfg.attention == "mla":
        Hkv, Dqk, Dv = H, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    else:
        hd = int(getattr(cfg, "head_dim", 0) or 0) or cfg.mha_head_dim()
        Hkv, Dqk, Dv = cfg.kv_heads(), hd, hd
    if H % Hkv:
        print(f"error: num_key_value_heads {Hkv} does not divide num_attention_heads {H}",
              file=sys.stderr)
        return 2
    scale = 1.0 / (Dqk ** 0.5)
    dtype = getattr(torch, dtype_name)
    # As moelab_attention_flops_per_token (train/model_info.cpp) for one block and B*T tokens.
    flops = 6.0 * T * H * (Dqk + Dv) / 2 * B * T
    F = torch.nn.functional
    sdpa = _has_sdpa()
    gqa = Hkv != H
    gqa_note = ""
    use_enable_gqa = False
    if gqa:
        use_enable_gqa = sdpa and _sdpa_takes(device, enable_gqa=True)
        gqa_note = ("GQA via enable_gqa=True" if use_enable_gqa
                    else "GQA via repeat_interleave of k, v (inside the timed forward)")

    # scale is 1/sqrt(Dqk), sdpa's own default, so a torch 2.0 without the argument computes the same.
    sdpa_kw = {"scale": scale} if sdpa and _sdpa_takes(device, scale=0.5) else {}
    if use_enable_gqa:
        sdpa_kw["enable_gqa"] = True
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q, k, v = rnd(B, H, T, Dqk), rnd(B, Hkv, T, Dqk), rnd(B, Hkv, T, Dv)
    grad_out = rnd(B, H, T, Dv)

    def make_forward(v_width: int):
        def forward(q, k, v):
            if gqa and not use_enable_gqa:
                k = k.repeat_interleave(H // Hkv, dim=1)
                v = v.repeat_interleave(H // Hkv, dim=1)
            if not sdpa:
                o = explicit_causal_attention(q, k, v, scale)
            else:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, **sdpa_kw)
            return o[..., :Dv] if v_width != Dv else o
        return forward

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(forward, vv):
        leaves = [t.detach().requires_grad_(True) for t in (q, k, vv)]
        fwd = bwd = 0.0
        for step in range(warmup + steps):
            sync()
            t0 = time.perf_counter()
            o = forward(*leaves)
            sync()
            t1 = time.perf_counter()
            torch.autograd.grad(o, leaves, grad_out)
            sync()
            t2 = time.perf_counter()
            del o
            if step >= warmup:
                fwd += (t1 - t0) * 1000.0 / steps
                bwd += (t2 - t1) * 1000.0 / steps
        backend = (sdpa_backend_used(lambda: forward(*leaves)) if sdpa
                   else "sdpa unavailable: explicit math")
        return fwd, bwd, backend

    def line(label, fwd, bwd):
        ms = fwd + bwd
        g = flops / (ms * 1e6) if ms > 0 else float("nan")
        print(f"{label} attention ms: {ms:.3f} (forward {fwd:.3f}, backward {bwd:.3f})  GFLOP/s: {g:.1f}")

    fwd, bwd, backend = timed(make_forward(Dv), v)
    line("torch", fwd, bwd)
    print(f"  torch {torch.__version__}, device {device.type}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
          + f", threads {torch.get_num_threads()}, {dtype_name} tensors (no autocast), "
          + (f"sdpa backend {backend} (enabled: {sdpa_backends_enabled(device)})" if sdpa
             else backend)
          + (f", {gqa_note}" if gqa_note else ""))
    print(f"  attention {cfg.attention}, B {B} T {T} H {H} Hkv {Hkv} Dqk {Dqk} Dv {Dv}, causal, "
          f"scale 1/sqrt({Dqk}), steps {steps} (+{warmup} warmup), "
          f"{flops / 1e9:.4g} GFLOP per forward + backward")
    if sdpa and device.type == "cuda" and Dqk > Dv:
        vpad = F.pad(v, (0, Dqk - Dv))  # zero columns: the sliced output is the same attention
        try:
            pf, pb, pbackend = timed(make_forward(Dqk), vpad)
        except RuntimeError as e:
            print(f"  sdpa (v padded to Dqk) failed: {str(e).splitlines()[0]}")
        else:
            line("sdpa (v padded to Dqk)", pf, pb)
            print(f"  v zero-padded {Dv} -> {Dqk} so the flash backend can take it, output sliced "
                  f"back to Dv; backend {pbackend}; GFLOP/s on the unpadded FLOPs")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--config", help="moelab TOML preset or JSON ModelConfig")
    ap.add_argument("--kernel", default="step", choices=["step", "attention"],
                    help="step: a whole training step (default); attention: one layer's causal "
                         "attention forward + backward (see above)")
    ap.add_argument("--peer", default="twin", choices=["twin", "hf"],
                    help="twin: tests/reference/twin.py; hf: transformers' DeepseekV3ForCausalLM")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: OMP_NUM_THREADS, else all CPUs)")
    ap.add_argument("--batch-size", type=int, default=None, help="B (default: config file, else 8)")
    ap.add_argument("--seq-len", type=int, default=None, help="T (default: config file, else 128)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10)")
    ap.add_argument("--warmup", type=int, default=None,
                    help=f"untimed steps first (default: config file, else 2; under --compile at "
                         f"least {COMPILE_WARMUP})")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "float64", "bfloat16"],
                    help="auto: float32 on cpu, bfloat16 on cuda; bfloat16 = autocast with fp32 "
                         "master weights (see above)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dispatch", default="sorted", choices=["sorted", "loop"],
                    help="twin MoE dispatch: sorted (one host sync per layer) or the reference loop")
    ap.add_argument("--hf-attn", default=None,
                    help="hf: attn_implementation (eager, sdpa, ...; default: transformers' choice)")
    ap.add_argument("--hf-experts", default=None,
                    help="hf: experts_implementation where transformers has it (default: its choice)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (torch >= 2)")
    ap.add_argument("--compile-settle", type=int, default=3,
                    help="--compile: after --warmup, warm up on until this many steps in a row "
                         "compiled nothing (default 3; 0: exactly --warmup steps)")
    ap.add_argument("--compile-max-warmup", type=int, default=40,
                    help="--compile: at most this many warm-up steps in all (default 40)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg, from_file = (read_config(args.config) if args.config else (ModelConfig(), {}))
    B = args.batch_size or int(from_file.get("batch_size", 8))
    T = args.seq_len or int(from_file.get("seq_len", 128))
    steps = args.steps if args.steps is not None else int(from_file.get("steps", 10))
    warmup = args.warmup if args.warmup is not None else int(from_file.get("warmup", 2))
    if args.compile and args.warmup is None:
        warmup = max(warmup, COMPILE_WARMUP)
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0) or os.cpu_count() or 1)
    torch.set_num_threads(threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.compile and not hasattr(torch, "compile"):
        print(f"error: --compile needs torch >= 2.0 (this is torch {torch.__version__})",
              file=sys.stderr)
        return 2
    device = torch.device(args.device)
    dtype_name = resolve_dtype(args.dtype, device)
    mixed = dtype_name == "bfloat16"
    param_dtype = torch.float32 if mixed else getattr(torch, dtype_name)
    amp = amp_context(dtype_name, device)
    if args.kernel == "attention":
        if args.peer != "twin" or args.compile:
            print("error: --kernel attention takes no --peer hf or --compile", file=sys.stderr)
            return 2
        return attention_bench(cfg, B, T, steps, warmup, device, dtype_name, args.seed)
    if T > cfg.max_position_embeddings:
        print(f"note: seq_len {T} > max_position_embeddings {cfg.max_position_embeddings}")

    hf_classes = None
    if args.peer == "hf":
        if cfg.attention != "mla":
            print(f"error: --peer hf needs attention = mla (this config has {cfg.attention}): "
                  "HF's DeepseekV3ForCausalLM has only MLA attention", file=sys.stderr)
            return 2
        hf_classes = import_hf()
        if isinstance(hf_classes, str):
            print(f"skip: --peer hf needs transformers with DeepseekV3 (>= 4.51) under torch "
                  f"{torch.__version__}: {hf_classes}")
            return SKIP

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    router_note = ""
    if args.peer == "twin":
        model = Twin(cfg)
        init_weights(model, gen, f32_exact=False)
        model = model.to(device=device, dtype=param_dtype)
        set_moe_mode(model, args.dispatch, track_margins=False)
        opt = make_adamw(model, lr=args.lr)
        if mixed and cfg.ffn == "moe":
            router_note = (", router GEMM fp32" if fp32_router_under_autocast(cfg, device.type)
                           else ", router GEMM under autocast (E == V)")
        Dm = cfg.num_nextn_predict_layers
    else:
        model = build_hf(cfg, hf_classes, args.hf_attn, args.hf_experts)
        model = model.to(device=device, dtype=param_dtype)
        opt = make_adamw_named(model, lr=args.lr)
        Dm = 0
    watch = CompileWatch() if args.compile else None
    runner = torch.compile(model) if args.compile else model

    n_batches = warmup + steps
    batches = torch.randint(0, cfg.vocab_size, (n_batches, B, T + 1 + Dm), generator=gen).to(device)
    params = [p for p in model.parameters() if p.requires_grad]

    def twin_step(tokens):
        """twin.train_step with the forward under `amp` (and through the compiled runner)."""
        opt.zero_grad(set_to_none=True)
        with amp():
            out = runner(tokens)
        out["loss_total"].backward()
        for p in params:  # an idle expert steps with a zero gradient, as in train_step
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        clip_grad_norm(params, 1.0)
        opt.step()
        bias_update(model, {l: r["load"] for l, r in out["router"].items()})
        return out["loss_total"].detach()

    def hf_step(tokens):
        opt.zero_grad(set_to_none=True)
        with amp():
            logits = runner(input_ids=tokens[:, :T], use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, cfg.vocab_size), tokens[:, 1:T + 1].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.detach()

    step = twin_step if args.peer == "twin" else hf_step

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    losses = []
    n_run = 0  # steps run so far (the index CompileWatch stamps on its events)

    def run(tokens):
        nonlocal n_run
        if watch:
            watch.step = n_run
        losses.append(step(tokens))
        n_run += 1

    t_warm = time.perf_counter()
    for i in range(warmup):
        run(batches[i])
    extra = 0
    if watch and watch.hooked and args.compile_settle > 0:
        # Dynamo recompiles when a guarded value changes (the sorted dispatch's per-expert counts,
        # until a frame hits its recompile limit), so a fixed warm-up can leave compilations in
        # the timed steps. Go on, on fresh batches, until compile_settle steps in a row compiled
        # nothing or the warm-up reaches compile_max_warmup steps.
        extra_gen = torch.Generator().manual_seed(args.seed + 1)
        while (n_run < args.compile_max_warmup
               and (n_run < args.compile_settle
                    or watch.in_steps(n_run - args.compile_settle, n_run))):
            run(torch.randint(0, cfg.vocab_size, (B, T + 1 + Dm), generator=extra_gen).to(device))
            extra += 1
    warm_steps = n_run
    sync()
    warm_s = time.perf_counter() - t_warm
    t0 = time.perf_counter()
    for i in range(warmup, n_batches):
        run(batches[i])
    sync()
    elapsed = time.perf_counter() - t0
    losses = [float(l) for l in losses]

    total, active = count_params(model, cfg)
    if steps > 0:
        ms = 1000.0 * elapsed / steps
        tps = B * T * steps / elapsed
        print(f"torch tokens/s: {tps:.1f}  ms/step: {ms:.2f}")
    else:
        print("torch tokens/s: n/a  ms/step: n/a  (--steps 0)")
    precision = (f"bf16 autocast, fp32 master weights{router_note}" if mixed
                 else f"{dtype_name} everywhere")
    if args.peer == "twin":
        peer = f"peer twin (MoE dispatch {args.dispatch})"
    else:
        hcfg = model.config
        peer = (f"peer hf (transformers {hf_classes[2]} DeepseekV3ForCausalLM, attention "
                f"{getattr(hcfg, '_attn_implementation', '?')}"
                + (f", experts {getattr(hcfg, '_experts_implementation', None)}"
                   if getattr(hcfg, "_experts_implementation", None) else "")
                + "; no MTP, no balance loss, no bias update)")
    print(f"  {peer}, torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else "")
          + f", threads {torch.get_num_threads()}, precision {precision}, "
          f"{'compiled' if args.compile else 'eager'}")
    print(f"  B {B}  T {T}  steps {steps} (+{warm_steps} warmup)  tokens/step {B * T}")
    print(f"  attention {cfg.attention}, ffn {cfg.ffn}, L {cfg.num_hidden_layers}, D {cfg.hidden_size}, "
          f"V {cfg.vocab_size}, MTP {Dm}" + (f", E {cfg.n_routed_experts} K {cfg.num_experts_per_tok}"
                                          if cfg.ffn == "moe" else ""))
    print(f"  parameters {total:,} (active per token, main model, no embedding lookup: {active:,})")
    print(f"  loss first {losses[0]:.4f}  last {losses[-1]:.4f}" if losses else "  no steps run")
    if watch:
        # "compile:" lines: scripts/bench_peers.py reads the timed steps' count from the second.
        settle = (f"{warmup} + {extra} steps until {args.compile_settle} in a row compiled "
                  f"nothing" if args.compile_settle > 0 and watch.hooked else f"{warmup} steps")
        if extra and watch.in_steps(warm_steps - args.compile_settle, warm_steps):
            settle += f" (stopped at --compile-max-warmup {args.compile_max_warmup})"
        print(f"  compile: warm-up {settle}, {warm_s:.1f} s; compilations "
              f"{watch.summary(0, warm_steps)}, per step {watch.per_step(0, warm_steps)}; "
              f"{watch.counts()}")
        timed_events = len(watch.in_steps(warm_steps, n_run))
        print(f"  compile: timed-step compilations {watch.summary(warm_steps, n_run)}"
              + (f", per step {watch.per_step(warm_steps, n_run)}: the timed steps include "
                 f"compilation, raise --warmup or --compile-settle" if timed_events else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
