"""test_twin.py: self-tests of the PyTorch twin, the safetensors reader/writer and the golden files.

    /usr/bin/python3 tests/reference/test_twin.py             # plain asserts, no pytest needed
    /usr/bin/python3 -m pytest tests/reference/test_twin.py    # when pytest is installed

- gradients of loss.total against torch.autograd.gradcheck (finite differences, float64) on tiny
  configs covering MLA (with and without q compression), MHA with partial RoPE, GQA, dense, MoE
  sigmoid/softmax, groups, aux-free bias, capacity drops, the three balance terms, MTP, tying;
  the routing decisions are asserted to be away from their kinks first;
- RoPE: interleaved pairs, relative-position property, same dot products as HF's de-interleaving
  implementation; MoE: the expert loop equals a dense all-experts combine; capacity and bias
  update on hand-worked examples;
- safetensors: round trip, header layout, malformed files rejected;
- golden files: the layout of GOLDEN.md, and regeneration reproduces them bit for bit.
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import make_golden  # noqa: E402
import safetensors_io  # noqa: E402
from twin import (ModelConfig, MoE, Twin, apply_rope, bias_update, init_weights,  # noqa: E402
                  min_margins, set_moe_mode)

# ----------------------------------------------------------------------------------------------
# gradcheck
# ----------------------------------------------------------------------------------------------

TINY = {
    # MLA without q compression, sigmoid MoE with groups + aux-free bias + capacity, shared expert,
    # first layer dense, MTP depth 2, all balance terms
    "mla_q0_moe": dict(
        vocab_size=7, hidden_size=6, num_hidden_layers=2, max_position_embeddings=8,
        attention="mla", num_attention_heads=2, q_lora_rank=0, kv_lora_rank=3,
        qk_nope_head_dim=2, qk_rope_head_dim=2, v_head_dim=3,
        ffn="moe", intermediate_size=4, first_k_dense_replace=1, moe_intermediate_size=2,
        n_routed_experts=6, n_shared_experts=1, num_experts_per_tok=2, scoring_func="sigmoid",
        n_group=2, topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.5,
        capacity_factor=1.5, aux_free_bias=True, seq_aux_loss_alpha=0.1, aux_loss_alpha=0.1,
        router_z_loss_coef=0.01, num_nextn_predict_layers=2, mtp_loss_weight=0.3),
    # GQA, softmax MoE without renormalisation, capacity drops, tied embeddings, MTP depth 1
    "gqa_softmax_tied": dict(
        vocab_size=11, hidden_size=8, num_hidden_layers=1, max_position_embeddings=8,
        tie_word_embeddings=True, attention="gqa", num_attention_heads=4, num_key_value_heads=2,
        partial_rotary_factor=1.0, ffn="moe", moe_intermediate_size=3, n_routed_experts=4,
        n_shared_experts=0, num_experts_per_tok=2, scoring_func="softmax", norm_topk_prob=False,
        routed_scaling_factor=1.5, capacity_factor=1.0, aux_free_bias=False,
        seq_aux_loss_alpha=0.1, aux_loss_alpha=0.1, router_z_loss_coef=0.01,
        num_nextn_predict_layers=1),
    # MLA with q compression, dense
    "mla_cq_dense": dict(
        vocab_size=11, hidden_size=8, num_hidden_layers=2, max_position_embeddings=8,
        attention="mla", num_attention_heads=2, q_lora_rank=4, kv_lora_rank=5,
        qk_nope_head_dim=2, qk_rope_head_dim=4, v_head_dim=3, ffn="dense", intermediate_size=6),
    # MHA with partial RoPE (head_dim 4, R = 2), dense, tied, MTP depth 1
    "mha_partial": dict(
        vocab_size=11, hidden_size=8, num_hidden_layers=1, max_position_embeddings=8,
        tie_word_embeddings=True, attention="mha", num_attention_heads=2,
        partial_rotary_factor=0.5, ffn="dense", intermediate_size=6, num_nextn_predict_layers=1),
}


def _tiny_model(name: str, B: int = 2, T: int = 4, min_margin: float = 1e-3, need_drops: bool = False):
    """Deterministic tiny double model whose routing decisions are at least min_margin from a
    kink (so finite differences with eps = 1e-6 do not cross one)."""
    cfg = ModelConfig.from_dict(TINY[name])
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        model = Twin(cfg).double()
        init_weights(model, gen, norm_perturb=0.2, bias_std=0.1, f32_exact=False)
        # bigger weights than the 0.02 init so that every term has a visible gradient
        with torch.no_grad():
            for n, p in model.named_parameters():
                if not n.endswith("norm.weight"):
                    p.mul_(20.0)
        tokens = torch.randint(0, cfg.vocab_size, (B, T + 1 + cfg.num_nextn_predict_layers),
                               generator=gen)
        with torch.no_grad():
            out = model(tokens)
        m = min_margins(out)
        dropped = sum(int(i["dropped"]) for i in out["router"].values())
        if min(m.values()) > min_margin and (dropped > 0 or not need_drops):
            return model, tokens, out
    raise AssertionError(f"{name}: no seed with margins > {min_margin}")


def _gradcheck(name: str, need_drops: bool = False):
    model, tokens, out = _tiny_model(name, need_drops=need_drops)
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in model.named_parameters()]
    buffers = {n: b for n, b in model.named_buffers()}

    def f(*ps):
        state = dict(zip(names, ps))
        state.update(buffers)
        return torch.nn.utils.stateless.functional_call(model, state, (tokens,))["loss_total"]

    t0 = time.time()
    ok = torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=False)
    assert ok
    # every parameter took part (a gradient that is identically zero hides a missing path)
    loss = f(*params)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for n, g in zip(names, grads):
        if ".experts." in n:  # an expert may legitimately receive no token
            continue
        assert g is not None and g.abs().max() > 0, f"{name}: no gradient reaches {n}"
    n_par = sum(p.numel() for p in params)
    print(f"  gradcheck {name}: {n_par} parameters ok ({time.time() - t0:.1f} s)")


def test_gradcheck_mla_q0_moe():
    _gradcheck("mla_q0_moe", need_drops=True)


def test_gradcheck_gqa_softmax_tied():
    _gradcheck("gqa_softmax_tied", need_drops=True)


def test_gradcheck_mla_cq_dense():
    _gradcheck("mla_cq_dense")


def test_gradcheck_mha_partial():
    _gradcheck("mha_partial")


# ----------------------------------------------------------------------------------------------
# pieces checked against independent formulations
# ----------------------------------------------------------------------------------------------

def _hf_rope_deinterleaved(x: torch.Tensor, theta: float) -> torch.Tensor:
    """HF DeepSeek-V3's apply_rotary_pos_emb_interleave on x [B, T, h, R]: de-interleave the pairs,
    then rotate_half with cos/sin of cat(freqs, freqs). Output order: [evens' images ; odds' images]."""
    B, T, h, R = x.shape
    inv_freq = 1.0 / (theta ** (torch.arange(0, R, 2, dtype=torch.float64) / R))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat([freqs, freqs], -1)
    cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]
    x = x.view(B, T, h, R // 2, 2).transpose(4, 3).reshape(B, T, h, R)
    rot = torch.cat([-x[..., R // 2:], x[..., :R // 2]], -1)
    return x * cos + rot * sin


def test_rope():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 3, 6, generator=g, dtype=torch.float64)
    y = apply_rope(x, 10000.0)
    # position 0 is the identity; norms of each pair are preserved
    assert torch.allclose(y[:, 0], x[:, 0])
    assert torch.allclose(y.view(2, 9, 3, 3, 2).norm(dim=-1), x.view(2, 9, 3, 3, 2).norm(dim=-1))
    # pair i at position p rotates by p * theta^(-2i/R), counter-clockwise
    p, i = 5, 2
    a = p * 10000.0 ** (-2 * i / 6)
    x0, x1 = x[0, p, 1, 2 * i], x[0, p, 1, 2 * i + 1]
    assert torch.allclose(y[0, p, 1, 2 * i], x0 * math.cos(a) - x1 * math.sin(a))
    assert torch.allclose(y[0, p, 1, 2 * i + 1], x0 * math.sin(a) + x1 * math.cos(a))
    # HF's de-interleaved form gives the same numbers in the order [2i images ; 2i+1 images]
    hf = _hf_rope_deinterleaved(x, 10000.0)
    assert torch.allclose(hf, torch.cat([y[..., 0::2], y[..., 1::2]], -1), atol=1e-12)
    # relative: <rope(q)_m, rope(k)_n> depends only on m - n
    q = torch.randn(6, generator=g, dtype=torch.float64).expand(1, 9, 1, 6)
    k = torch.randn(6, generator=g, dtype=torch.float64).expand(1, 9, 1, 6)
    rq, rk = apply_rope(q.contiguous(), 500.0)[0, :, 0], apply_rope(k.contiguous(), 500.0)[0, :, 0]
    assert torch.allclose(rq[5] @ rk[2], rq[7] @ rk[4]) and torch.allclose(rq[3] @ rk[3], q[0, 0, 0] @ k[0, 0, 0])


def test_moe_loop_equals_dense_combine():
    model, tokens, _ = _tiny_model("mla_q0_moe", need_drops=True)
    cfg = model.cfg
    moe: MoE = model.moe_layers()[1]
    x = torch.randn(2, 5, cfg.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    y, info = moe(x)
    u = x.reshape(-1, cfg.hidden_size)
    s = torch.sigmoid(u @ moe.gate.weight.T)
    assert torch.allclose(s, info["scores"])
    # dense combine weights: w[t, e] = gate if e is kept for t
    g = s.gather(1, info["topk_idx"])
    g = g / g.sum(-1, keepdim=True) * cfg.routed_scaling_factor
    w = torch.zeros_like(s)
    w.scatter_(1, info["topk_idx"], g * info["kept"])
    ref = sum(w[:, e:e + 1] * moe.experts[e](u) for e in range(cfg.n_routed_experts)) + moe.shared_experts(u)
    assert torch.allclose(y.reshape(-1, cfg.hidden_size), ref, atol=1e-14)
    # group limit: both chosen experts of a token lie in one group (topk_group = 1)
    per_group = cfg.n_routed_experts // cfg.n_group
    assert bool(((info["topk_idx"] // per_group) == (info["topk_idx"][:, :1] // per_group)).all())
    assert info["dropped"] == int((~info["kept"]).sum())


def test_sorted_dispatch_matches_loop():
    """The bench's sorted dispatch: the forward is bit-identical to the reference loop (CPU);
    gradients agree to rounding (autograd sums the per-expert gathers' gradients in another order)."""
    for name in ("mla_moe_mtp", "gqa_moe_softmax"):
        spec = make_golden.CONFIGS[name]
        cfg = ModelConfig.from_dict(spec["config"])
        for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 1e-5)):
            results = []
            for dispatch in ("loop", "sorted"):
                model, tokens = make_golden.build(cfg, spec["batch_size"], spec["seq_len"], 7)
                model = model.to(dtype)
                set_moe_mode(model, dispatch, track_margins=dispatch == "loop")
                out = model(tokens)
                out["loss_total"].backward()
                results.append(([out["logits"], out["loss_total"]],
                                [p.grad if p.grad is not None else torch.zeros_like(p)
                                 for p in model.parameters()]))
            (fa, ga), (fb, gb) = results
            assert all(torch.equal(a, b) for a, b in zip(fa, fb)), name
            for a, b in zip(ga, gb):
                assert (a - b).abs().max() <= tol * max(1.0, a.abs().max().item()), name


def test_capacity_and_bias_update_by_hand():
    cfg = ModelConfig.from_dict(dict(vocab_size=5, hidden_size=4, num_hidden_layers=1,
                                     n_routed_experts=4, num_experts_per_tok=1, n_shared_experts=0,
                                     capacity_factor=1.0, moe_intermediate_size=2))
    moe = MoE(cfg).double()
    # 4 tokens, K = 1, E = 4 -> cap = ceil(1 * 4 * 1 / 4) = 1; tokens 0, 1, 3 pick expert 2,
    # token 2 picks expert 0; expert 2 keeps its highest score (token 1) and drops tokens 0 and 3
    s = torch.tensor([[0.1, 0.2, 0.6, 0.1], [0.1, 0.1, 0.7, 0.1],
                      [0.5, 0.2, 0.2, 0.1], [0.2, 0.1, 0.65, 0.05]], dtype=torch.float64)
    idx = torch.tensor([[2], [2], [0], [2]])
    kept, margin = moe.capacity_keep(s, idx)
    assert kept.view(-1).tolist() == [False, True, True, False]
    assert abs(margin - 0.05) < 1e-12
    # ties: the lower token index wins
    s2 = torch.full((4, 4), 0.25, dtype=torch.float64)
    kept2, _ = moe.capacity_keep(s2, torch.tensor([[1], [1], [1], [3]]))
    assert kept2.view(-1).tolist() == [True, False, False, True]
    # bias update: b += gamma * sign(mean - load), sign(0) = 0
    model = Twin(ModelConfig.from_dict(dict(vocab_size=5, hidden_size=4, num_hidden_layers=1,
                                            n_routed_experts=4, num_experts_per_tok=2,
                                            bias_update_speed=0.5))).double()
    b = model.moe_layers()[0].gate.e_score_correction_bias
    b.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    bias_update(model, {0: torch.tensor([4, 2, 1, 1])})  # mean 2
    assert b.tolist() == [0.5, 2.0, 3.5, 4.5]


# ----------------------------------------------------------------------------------------------
# safetensors
# ----------------------------------------------------------------------------------------------

def test_safetensors_roundtrip():
    rng = np.random.default_rng(0)
    tensors = {
        "b.f32": rng.standard_normal((3, 5)).astype(np.float32),
        "a.f64": rng.standard_normal((2, 2, 3)),
        "c.i32": rng.integers(-1000, 1000, (7,)).astype(np.int32),
        "scalar": np.array(3.5, dtype=np.float32),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }
    meta = {"config": json.dumps({"x": 1}), "seq_len": "7"}
    data = safetensors_io.dumps(tensors, meta)
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0 and data[8:9] == b"{"
    header = json.loads(data[8:8 + n])
    assert header["b.f32"]["dtype"] == "F32" and header["a.f64"]["dtype"] == "F64"
    assert header["c.i32"]["dtype"] == "I32" and header["scalar"]["shape"] == []
    assert header["__metadata__"] == meta
    back, meta2 = safetensors_io.loads(data)
    assert meta2 == meta and set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v)
    assert safetensors_io.dumps(back, meta2) == data  # bytes depend only on the content
    # known bytes: one f32 tensor [1.0] -> header, padding, then 00 00 80 3f
    one = safetensors_io.dumps({"x": np.array([1.0], dtype=np.float32)})
    assert one[-4:] == b"\x00\x00\x80\x3f" and (len(one) - 4) % 8 == 0
    # BF16 round trip of exactly representable values
    bf = safetensors_io.dumps({"h": np.array([1.0, -2.5, 0.15625], dtype=np.float32)}, bf16=("h",))
    assert safetensors_io.loads(bf)[0]["h"].tolist() == [1.0, -2.5, 0.15625]
    # malformed files are rejected
    for bad in (data[:4], data[:-1], struct.pack("<Q", 10 ** 9) + data[8:],
                data[:8] + b"[" + data[9:]):
        try:
            safetensors_io.loads(bad)
        except ValueError:
            continue
        raise AssertionError("a malformed file was accepted")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "t.safetensors")
        safetensors_io.save(path, tensors, meta)
        back2, _ = safetensors_io.load(path)
        assert all(np.array_equal(back2[k], tensors[k]) for k in tensors)


# ----------------------------------------------------------------------------------------------
# golden files
# ----------------------------------------------------------------------------------------------

def test_golden_layout():
    for name, spec in make_golden.CONFIGS.items():
        path = os.path.join(make_golden.GOLDEN_DIR, name + ".safetensors")
        assert os.path.exists(path), f"{path} missing: run make_golden.py"
        assert os.path.getsize(path) < 400 * 1024
        t, meta = safetensors_io.load(path)
        cfg_json = json.loads(meta["config"])
        assert list(cfg_json) == ModelConfig.field_names()
        cfg = ModelConfig.from_dict(cfg_json)
        B, T = int(meta["batch_size"]), int(meta["seq_len"])
        assert (B, T) == (spec["batch_size"], spec["seq_len"])
        Dm = cfg.num_nextn_predict_layers
        model = Twin(cfg)
        params = dict(model.named_parameters())
        moe = sorted(model.moe_layers())
        expected = {"tokens", "logits", "loss.total", "loss.main", "loss.seq_aux", "loss.aux",
                    "loss.z", "adamw.loss"}
        expected |= {f"loss.mtp.{k}" for k in range(1, Dm + 1)}
        for n, p in params.items():
            expected |= {n, "grad." + n, "adamw.final." + n}
            assert t[n].shape == tuple(p.shape) == t["grad." + n].shape == t["adamw.final." + n].shape
        for n, _ in model.named_buffers():
            expected.add("buffer." + n)
        for l in moe:
            expected |= {f"router.load.{l}", f"router.dropped.{l}", f"adamw.bias.{l}"}
        assert set(t) == expected, set(t) ^ expected
        assert t["tokens"].dtype == np.int32 and t["tokens"].shape == (B, T + 1 + Dm)
        assert all(v.dtype == np.float32 for k, v in t.items() if k != "tokens")
        assert t["logits"].shape == (B, T, cfg.vocab_size) and t["adamw.loss"].shape == (5,)
        assert t["adamw.loss"][0] == t["loss.total"]
        for l in moe:
            assert t[f"router.load.{l}"].sum() == B * T * cfg.num_experts_per_tok
        if name == "gqa_moe_softmax":
            assert sum(float(t[f"router.dropped.{l}"]) for l in moe) > 0
        # the stored numbers are the twin's: recompute the losses from the stored f32 weights
        model = model.double()
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(torch.from_numpy(t[n]))
            for n, b in model.named_buffers():
                b.copy_(torch.from_numpy(t["buffer." + n]))
            out = model(torch.from_numpy(t["tokens"]).long())
        assert abs(out["loss_total"].item() - float(t["loss.total"])) < 1e-6
        assert np.abs(out["logits"].numpy() - t["logits"]).max() < 1e-6


def test_golden_reproducible():
    for name in make_golden.CONFIGS:
        path = os.path.join(make_golden.GOLDEN_DIR, name + ".safetensors")
        data, _ = make_golden.generate(name)
        with open(path, "rb") as f:
            assert f.read() == data, f"{path} is not reproduced bit for bit"


def main() -> int:
    tests = [(k, v) for k, v in globals().items() if k.startswith("test_") and callable(v)]
    failed = 0
    for name, fn in tests:
        t0 = time.time()
        try:
            fn()
            print(f"PASS {name} ({time.time() - t0:.1f} s)")
        except Exception as e:  # noqa: BLE001
            failed += 1
            import traceback
            traceback.print_exc()
            print(f"FAIL {name}: {e!r}")
    print(f"{len(tests) - failed}/{len(tests)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
