"""make_golden.py: run the PyTorch twin (twin.py) on three tiny configs and write
tests/reference/golden/<name>.safetensors with the layout of GOLDEN.md.

    /usr/bin/python3 tests/reference/make_golden.py            # needs python3-torch (apt), CPU, seconds
    /usr/bin/python3 tests/reference/make_golden.py --check    # regenerate in memory, compare bytes

Everything is computed in float64 from f32-representable weights and inputs, then rounded to f32
when written. Seeds are fixed; for each config the first seed (from its base seed upwards) whose
discrete decisions (group choice, top-K, capacity) all clear MARGIN in all six forwards (the
initial one and the five AdamW steps) is used, so that an f32 implementation takes the same
decisions. The choice is deterministic: the files are reproduced bit for bit.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, Tuple

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import safetensors_io  # noqa: E402
from twin import (ModelConfig, Twin, init_weights, make_adamw, min_margins,  # noqa: E402
                  select_experts, train_step)

GOLDEN_DIR = os.path.join(HERE, "golden")
MARGIN = 1e-4          # every discrete routing decision must clear this gap
ADAMW_STEPS = 5
NORM_PERTURB = 0.1     # norm weights = 1 + 0.1 * randn, so a kernel that ignores them fails
BIAS_STD = 0.02        # e_score_correction_bias = 0.02 * randn, so selection depends on it
MAX_SEED_TRIES = 500

# The four configs. Shapes are small and odd on purpose (T = 7, H = 3, Dn != Dv, ...).
CONFIGS: Dict[str, dict] = {
    # MLA with query compression, sigmoid MoE with aux-free bias and group-limited routing,
    # shared expert, one dense layer first, MTP depth 2, V3-style gate normalisation and scaling.
    "mla_moe_mtp": dict(
        batch_size=2, seq_len=7, base_seed=1000,
        config=dict(
            vocab_size=48, hidden_size=24, num_hidden_layers=2, max_position_embeddings=16,
            attention="mla", num_attention_heads=3, q_lora_rank=16, kv_lora_rank=10,
            qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5,
            ffn="moe", intermediate_size=32, first_k_dense_replace=1, moe_intermediate_size=6,
            n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
            scoring_func="sigmoid", n_group=2, topk_group=1, norm_topk_prob=True,
            routed_scaling_factor=2.5, capacity_factor=0.0,
            aux_free_bias=True, bias_update_speed=0.001, seq_aux_loss_alpha=0.001,
            aux_loss_alpha=0.0, router_z_loss_coef=0.0,
            num_nextn_predict_layers=2, mtp_loss_weight=0.3)),
    # MHA with partial RoPE (last half of each head), dense SwiGLU, tied embeddings, MTP depth 1
    # (so the tied embedding gets gradient from the input, the head and the MTP module).
    "mha_dense": dict(
        batch_size=2, seq_len=7, base_seed=2000,
        config=dict(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, max_position_embeddings=16,
            tie_word_embeddings=True,
            attention="mha", num_attention_heads=4, num_key_value_heads=4,
            partial_rotary_factor=0.5,
            ffn="dense", intermediate_size=40,
            num_nextn_predict_layers=1, mtp_loss_weight=0.3)),
    # GQA (H = 4, Hkv = 2, full RoPE), softmax MoE without renormalisation, no shared expert,
    # no aux-free bias (the stored bias is random and must be ignored), the three balance losses,
    # capacity factor 1.0 with drops.
    "gqa_moe_softmax": dict(
        batch_size=2, seq_len=7, base_seed=3000,
        config=dict(
            vocab_size=64, hidden_size=32, num_hidden_layers=2, max_position_embeddings=16,
            attention="gqa", num_attention_heads=4, num_key_value_heads=2,
            partial_rotary_factor=1.0,
            ffn="moe", intermediate_size=40, first_k_dense_replace=0, moe_intermediate_size=8,
            n_routed_experts=8, n_shared_experts=0, num_experts_per_tok=2,
            scoring_func="softmax", n_group=1, topk_group=1, norm_topk_prob=False,
            routed_scaling_factor=1.0, capacity_factor=1.0,
            aux_free_bias=False, bias_update_speed=0.001, seq_aux_loss_alpha=0.01,
            aux_loss_alpha=0.01, router_z_loss_coef=0.001,
            num_nextn_predict_layers=0)),
    # MLA without query compression, sigmoid scores with group-limited routing (4 groups, the best 2)
    # and NO aux-free bias (the stored bias is random and must be ignored, also when scoring the
    # groups), V3-style normalisation and scaling, no shared expert, no MTP.
    "mla_groups_nobias": dict(
        batch_size=2, seq_len=7, base_seed=4000,
        config=dict(
            vocab_size=40, hidden_size=20, num_hidden_layers=2, max_position_embeddings=16,
            attention="mla", num_attention_heads=2, q_lora_rank=0, kv_lora_rank=8,
            qk_nope_head_dim=5, qk_rope_head_dim=4, v_head_dim=6,
            ffn="moe", intermediate_size=24, first_k_dense_replace=0, moe_intermediate_size=6,
            n_routed_experts=8, n_shared_experts=0, num_experts_per_tok=3,
            scoring_func="sigmoid", n_group=4, topk_group=2, norm_topk_prob=True,
            routed_scaling_factor=2.5, capacity_factor=0.0,
            aux_free_bias=False, bias_update_speed=0.001, seq_aux_loss_alpha=0.001,
            aux_loss_alpha=0.0, router_z_loss_coef=0.0,
            num_nextn_predict_layers=0)),
}


def f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def build(cfg: ModelConfig, B: int, T: int, seed: int) -> Tuple[Twin, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    model = Twin(cfg).double()
    init_weights(model, gen, norm_perturb=NORM_PERTURB, bias_std=BIAS_STD, f32_exact=True)
    tokens = torch.randint(0, cfg.vocab_size, (B, T + 1 + cfg.num_nextn_predict_layers),
                           generator=gen, dtype=torch.int64)
    return model, tokens


def routing_decisions(out: dict) -> dict:
    return {idx: (info["topk_idx"].clone(), info["kept"].clone()) for idx, info in out["router"].items()}


def f32_trajectory(cfg: ModelConfig, B: int, T: int, seed: int, decisions, model64: Twin):
    """Re-run the 5 AdamW steps in float32 from the same start. Returns (same routing decisions
    in every forward, {what: max abs deviation from the float64 run})."""
    model, tokens = build(cfg, B, T, seed)
    model = model.float()
    opt = make_adamw(model)
    same = True
    dev = dict(loss=0.0, final_weight=0.0, bias=0.0)
    for step in range(ADAMW_STEPS):
        out = train_step(model, opt, tokens, max_grad_norm=1.0)
        for idx, (topk, kept) in routing_decisions(out).items():
            ref_topk, ref_kept = decisions[step][idx]
            same &= torch.equal(topk, ref_topk) and torch.equal(kept, ref_kept)
    p64 = dict(model64.named_parameters())
    for n, p in model.named_parameters():
        dev["final_weight"] = max(dev["final_weight"], (p.double() - p64[n]).abs().max().item())
    b64 = dict(model64.named_buffers())
    for n, b in model.named_buffers():
        dev["bias"] = max(dev["bias"], (b.double() - b64[n]).abs().max().item())
    return same, dev


def extra_checks(name: str, cfg: ModelConfig, model: Twin, out: dict) -> str:
    """Config-specific properties the golden data must have; returns '' when they hold."""
    if cfg.ffn != "moe":
        return ""
    if name == "gqa_moe_softmax":
        dropped = sum(int(i["dropped"]) for i in out["router"].values())
        if dropped == 0:
            return "no assignment dropped by the capacity factor"
    if cfg.n_group > 1 or cfg.aux_free_bias:
        groups_restrict = bias_matters = False
        for idx, info in out["router"].items():
            s, chosen = info["scores"], info["topk_idx"]
            bias = model.moe_layers()[idx].gate.e_score_correction_bias
            K = cfg.num_experts_per_tok
            chosen_set = chosen.sort(-1).values
            if cfg.n_group > 1:
                free, _, _ = select_experts(s, bias if cfg.aux_free_bias else None, K, 1, 1)
                groups_restrict |= bool((free.sort(-1).values != chosen_set).any())
            if cfg.aux_free_bias:
                nob, _, _ = select_experts(s, None, K, cfg.n_group, cfg.topk_group)
                bias_matters |= bool((nob.sort(-1).values != chosen_set).any())
        if cfg.n_group > 1 and not groups_restrict:
            return "group-limited routing never changes a selection"
        if cfg.aux_free_bias and not bias_matters:
            return "the bias never changes a selection"
    return ""


def run_config(name: str, spec: dict, seed: int):
    """Compute everything for one seed. Returns (tensors, report) or (None, reason)."""
    cfg = ModelConfig.from_dict(spec["config"])
    B, T = spec["batch_size"], spec["seq_len"]
    model, tokens = build(cfg, B, T, seed)
    tensors: Dict[str, np.ndarray] = {"tokens": tokens.to(torch.int32).numpy()}
    for n, p in model.named_parameters():
        tensors[n] = f32(p)
    for n, b in model.named_buffers():
        tensors["buffer." + n] = f32(b)

    # the initial forward/backward
    model.zero_grad(set_to_none=True)
    out = model(tokens)
    out["loss_total"].backward()
    margins = [min_margins(out)]
    why = extra_checks(name, cfg, model, out)
    if why:
        return None, why
    tensors["logits"] = f32(out["logits"])
    tensors["loss.total"] = f32(out["loss_total"])
    tensors["loss.main"] = f32(out["loss_main"])
    for k, lk in enumerate(out["loss_mtp"], start=1):
        tensors[f"loss.mtp.{k}"] = f32(lk)
    tensors["loss.seq_aux"] = f32(out["loss_seq_aux"])
    tensors["loss.aux"] = f32(out["loss_aux"])
    tensors["loss.z"] = f32(out["loss_z"])
    for n, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        tensors["grad." + n] = f32(g)
    for idx, info in out["router"].items():
        tensors[f"router.load.{idx}"] = f32(info["load"].double())
        tensors[f"router.dropped.{idx}"] = np.array(int(info["dropped"]), dtype=np.float32)
    report = dict(
        loss_total=out["loss_total"].item(), loss_main=out["loss_main"].item(),
        loss_mtp=[l.item() for l in out["loss_mtp"]], loss_seq_aux=out["loss_seq_aux"].item(),
        loss_aux=out["loss_aux"].item(), loss_z=out["loss_z"].item(),
        load={idx: info["load"].tolist() for idx, info in out["router"].items()},
        dropped={idx: int(info["dropped"]) for idx, info in out["router"].items()})

    # 5 AdamW steps (+ bias update) on the same batch
    opt = make_adamw(model)
    losses, decisions = [], []
    for _ in range(ADAMW_STEPS):
        step_out = train_step(model, opt, tokens, max_grad_norm=1.0)
        losses.append(step_out["loss_total"].item())
        margins.append(min_margins(step_out))
        decisions.append(routing_decisions(step_out))
    assert losses[0] == report["loss_total"], "the first AdamW step must see the initial loss"
    tensors["adamw.loss"] = np.array(losses, dtype=np.float64).astype(np.float32)
    for idx, moe in model.moe_layers().items():
        tensors[f"adamw.bias.{idx}"] = f32(moe.gate.e_score_correction_bias)
    for n, p in model.named_parameters():
        tensors["adamw.final." + n] = f32(p)
    report["adamw_loss"] = losses

    m = {key: min(mm[key] for mm in margins) for key in ("topk", "group", "capacity")}
    report["margins"] = m
    report["seed"] = seed
    if min(m.values()) <= MARGIN:
        return None, f"margin {min(m.values()):.3g} <= {MARGIN}"
    # the same trajectory in float32 must take the same routing decisions in every forward
    same, dev = f32_trajectory(cfg, B, T, seed, decisions, model)
    if not same:
        return None, "a float32 run of the twin routes differently"
    report["f32_dev"] = dev
    metadata = {
        "config": cfg.to_json(),
        "batch_size": str(B),
        "seq_len": str(T),
        "seed": str(seed),
        "generator": "tests/reference/make_golden.py (twin.py, float64 computation rounded to f32)",
    }
    return (tensors, metadata), report


def generate(name: str, verbose: bool = False) -> Tuple[bytes, dict]:
    """The bytes of golden/<name>.safetensors and a report."""
    spec = CONFIGS[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one summation order, so the bytes are reproducible
    try:
        for attempt in range(MAX_SEED_TRIES):
            seed = spec["base_seed"] + attempt
            result, report = run_config(name, spec, seed)
            if result is not None:
                tensors, metadata = result
                report["attempts"] = attempt + 1
                return safetensors_io.dumps(tensors, metadata), report
            if verbose:
                print(f"  {name}: seed {seed} rejected ({report})")
        raise RuntimeError(f"{name}: no seed in {MAX_SEED_TRIES} tries clears the margin {MARGIN}")
    finally:
        torch.set_num_threads(threads)


def fmt_margin(x: float) -> str:
    return "n/a" if math.isinf(x) else f"{x:.3e}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="regenerate in memory and compare with the files on disk (no writes)")
    ap.add_argument("--out", default=GOLDEN_DIR, help="output folder (default: golden/)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    ok = True
    for name in CONFIGS:
        data, r = generate(name, verbose=args.verbose)
        path = os.path.join(args.out, name + ".safetensors")
        if args.check:
            same = os.path.exists(path) and open(path, "rb").read() == data
            ok &= same
            print(f"{name}: {'identical' if same else 'DIFFERENT'} ({path})")
            continue
        with open(path, "wb") as f:
            f.write(data)
        m = r["margins"]
        print(f"{name}: {len(data)} bytes, seed {r['seed']} ({r['attempts']} tries)")
        print(f"  loss.total {r['loss_total']:.9f}  main {r['loss_main']:.9f}  "
              f"mtp {[round(x, 9) for x in r['loss_mtp']]}")
        print(f"  seq_aux {r['loss_seq_aux']:.9g}  aux {r['loss_aux']:.9g}  z {r['loss_z']:.9g}")
        print(f"  adamw.loss {[round(x, 9) for x in r['adamw_loss']]}")
        print(f"  min margins: top-K {fmt_margin(m['topk'])}  group {fmt_margin(m['group'])}  "
              f"capacity {fmt_margin(m['capacity'])}")
        print(f"  a float32 run of the twin: same routing; after {ADAMW_STEPS} steps max |w32 - w64| "
              f"{r['f32_dev']['final_weight']:.2e}, max |b32 - b64| {r['f32_dev']['bias']:.2e}")
        for idx in r["load"]:
            print(f"  layer {idx}: load {r['load'][idx]}  dropped {r['dropped'][idx]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
