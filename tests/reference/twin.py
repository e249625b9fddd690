"""twin.py: an independent PyTorch reference of the model moelab trains (DeepSeek-V3 family).

Written from ../../../shared/MODEL.md (the math) and tests/reference/GOLDEN.md (the choices MODEL.md
leaves open), NOT translated from moelab's C++, so that the golden files it produces can catch the
C++'s mistakes. Plain PyTorch modules and autograd; clarity over speed (the routed experts are a
plain loop over experts).

Parameter names are the Hugging Face DeepSeek-V3 names (model.embed_tokens.weight,
model.layers.{l}.self_attn.kv_a_proj_with_mqa.weight, ..., lm_head.weight); MTP module k lives at
model.layers.{L+k-1}. The config field names are those of moelab's ModelConfig (core/nn/config.h),
with the enums as lowercase strings ("mla"/"mha"/"gqa", "dense"/"moe", "sigmoid"/"softmax").

Dimension letters: B batch, T time, D model dim, H heads, Dn nope head dim, Dr rope head dim,
Dv value head dim, Cq q latent, Ckv kv latent, E experts, K top-k, F expert hidden, V vocab,
L layers, N = B*T tokens.

Works in any floating dtype: the golden files are computed in float64 (from f32-representable
weights) and rounded to f32 when written; the bench runs in float32.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------
# Config: the fields of moelab's ModelConfig, same names, same defaults, same order.
# ----------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    # trunk
    vocab_size: int = 256
    hidden_size: int = 64
    num_hidden_layers: int = 2
    max_position_embeddings: int = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    initializer_range: float = 0.02
    # attention
    attention: str = "mla"  # "mla" | "mha" | "gqa"
    num_attention_heads: int = 4
    q_lora_rank: int = 0
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    num_key_value_heads: int = 4
    partial_rotary_factor: float = 1.0
    # feed-forward
    ffn: str = "moe"  # "dense" | "moe"
    intermediate_size: int = 128
    first_k_dense_replace: int = 0
    moe_intermediate_size: int = 32
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    scoring_func: str = "sigmoid"  # "sigmoid" | "softmax"
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    capacity_factor: float = 0.0
    # load balancing
    aux_free_bias: bool = True
    bias_update_speed: float = 0.001
    seq_aux_loss_alpha: float = 0.0
    aux_loss_alpha: float = 0.0
    router_z_loss_coef: float = 0.0
    # multi-token prediction
    num_nextn_predict_layers: int = 0
    mtp_loss_weight: float = 0.3

    # -- conversions --
    @classmethod
    def field_names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = set(cls.field_names())
        unknown = [k for k in d if k not in names]
        if unknown:
            raise ValueError(f"unknown ModelConfig keys: {unknown}")
        cfg = cls()
        for f in dataclasses.fields(cls):
            if f.name in d:
                v = d[f.name]
                if f.type in ("int", int):
                    if isinstance(v, bool) or int(v) != v:
                        raise ValueError(f"{f.name} = {v!r} is not an integer")
                    v = int(v)
                elif f.type in ("float", float):
                    v = float(v)
                elif f.type in ("bool", bool):
                    if not isinstance(v, bool):
                        raise ValueError(f"{f.name} = {v!r} is not a bool")
                elif f.type in ("str", str):
                    v = str(v).lower()
                setattr(cfg, f.name, v)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        """Every field, in declaration order, with JSON-friendly types (floats stay floats)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("float", float):
                v = float(v)
            out[f.name] = v
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    # -- derived quantities (the same helpers as config.h) --
    def is_moe_layer(self, layer: int) -> bool:
        return self.ffn == "moe" and layer >= self.first_k_dense_replace

    def mha_head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def mha_rope_dim(self) -> int:
        """R = even(round(partial_rotary_factor * head_dim)): round half away from zero, then
        down to an even number, capped at head_dim."""
        r = int(math.floor(self.partial_rotary_factor * self.mha_head_dim() + 0.5))
        r = max(0, min(r, self.mha_head_dim()))
        return r - r % 2

    def kv_heads(self) -> int:
        return self.num_key_value_heads if self.attention == "gqa" else self.num_attention_heads

    def validate(self) -> None:
        def need(ok, msg):
            if not ok:
                raise ValueError(msg)
        need(self.attention in ("mla", "mha", "gqa"), f"attention = {self.attention!r}")
        need(self.ffn in ("dense", "moe"), f"ffn = {self.ffn!r}")
        need(self.scoring_func in ("sigmoid", "softmax"), f"scoring_func = {self.scoring_func!r}")
        for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            need(getattr(self, k) > 0, f"{k} must be > 0")
        if self.attention == "mla":
            need(self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim must be even")
            need(self.kv_lora_rank > 0 and self.v_head_dim > 0, "MLA dims must be > 0")
        else:
            need(self.hidden_size % self.num_attention_heads == 0,
                 "num_attention_heads must divide hidden_size (mha/gqa)")
            if self.attention == "gqa":
                need(self.num_key_value_heads > 0
                     and self.num_attention_heads % self.num_key_value_heads == 0,
                     "num_key_value_heads must divide num_attention_heads (gqa)")
        if self.ffn == "moe":
            E, G = self.n_routed_experts, self.n_group
            need(E > 0 and G > 0 and E % G == 0, "n_group must divide n_routed_experts")
            need(1 <= self.topk_group <= G, "topk_group must be in [1, n_group]")
            need(1 <= self.num_experts_per_tok <= self.topk_group * (E // G),
                 "num_experts_per_tok must be <= topk_group * experts per group")
            need(self.capacity_factor >= 0, "capacity_factor must be >= 0")
        need(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers must be >= 0")


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------

def linear(in_features: int, out_features: int) -> nn.Linear:
    """y = x W^T with W [out, in], no bias (HF DeepSeek-V3 has no biases)."""
    return nn.Linear(in_features, out_features, bias=False)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * rstd * self.weight


def apply_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Interleaved RoPE on x [B, T, h, R]: pairs (2i, 2i+1) rotate by angle pos * theta^(-2i/R),
    pos = 0..T-1 (the position along dim 1).
        out[2i]   = x[2i] cos - x[2i+1] sin
        out[2i+1] = x[2i] sin + x[2i+1] cos
    Angles are computed in float64, then cast to x's dtype."""
    T, R = x.shape[1], x.shape[-1]
    if R == 0:
        return x
    i = torch.arange(R // 2, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * i / R)                                       # [R/2]
    angle = torch.arange(T, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, R/2]
    cos = angle.cos().to(x.dtype)[None, :, None, :]
    sin = angle.sin().to(x.dtype)[None, :, None, :]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    y1 = x1 * cos - x2 * sin
    y2 = x1 * sin + x2 * cos
    return torch.stack([y1, y2], dim=-1).flatten(-2)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q, k [B, T, H, Dk], v [B, T, H, Dv] -> o [B, T, H, Dv]; causal softmax(q k^T * scale) v."""
    T = q.shape[1]
    scores = torch.einsum("bthd,bshd->bhts", q, k) * scale                  # [B, H, T, T]
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    return torch.einsum("bhts,bshd->bthd", p, v)


class MLAttention(nn.Module):
    """Multi-head latent attention (MODEL.md "Multi-head latent attention")."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, H = cfg.hidden_size, cfg.num_attention_heads
        Dn, Dr, Dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        Cq, Ckv = cfg.q_lora_rank, cfg.kv_lora_rank
        if Cq > 0:
            self.q_a_proj = linear(D, Cq)
            self.q_a_layernorm = RMSNorm(Cq, cfg.rms_norm_eps)
            self.q_b_proj = linear(Cq, H * (Dn + Dr))
        else:
            self.q_proj = linear(D, H * (Dn + Dr))
        self.kv_a_proj_with_mqa = linear(D, Ckv + Dr)
        self.kv_a_layernorm = RMSNorm(Ckv, cfg.rms_norm_eps)
        self.kv_b_proj = linear(Ckv, H * (Dn + Dv))
        self.o_proj = linear(H * Dv, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        H = cfg.num_attention_heads
        Dn, Dr, Dv, Ckv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        # query: [B, T, H, Dn + Dr], per head [nope ; rope]
        if cfg.q_lora_rank > 0:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        else:
            q = self.q_proj(x)
        q = q.view(B, T, H, Dn + Dr)
        q_nope, q_rope = q[..., :Dn], q[..., Dn:]
        # key/value: [ckv ; kr] = W_kva x; kr is one rope key shared by all heads, no norm on it
        kva = self.kv_a_proj_with_mqa(x)                                       # [B, T, Ckv + Dr]
        ckv, kr = kva[..., :Ckv], kva[..., Ckv:]
        kv = self.kv_b_proj(self.kv_a_layernorm(ckv)).view(B, T, H, Dn + Dv)  # per head [k_nope ; v]
        k_nope, v = kv[..., :Dn], kv[..., Dn:]
        q_rope = apply_rope(q_rope, cfg.rope_theta)
        kr = apply_rope(kr.view(B, T, 1, Dr), cfg.rope_theta).expand(B, T, H, Dr)
        qh = torch.cat([q_nope, q_rope], dim=-1)
        kh = torch.cat([k_nope, kr], dim=-1)
        o = causal_attention(qh, kh, v, 1.0 / math.sqrt(Dn + Dr))           # [B, T, H, Dv]
        return self.o_proj(o.reshape(B, T, H * Dv))


class MHAttention(nn.Module):
    """MHA / GQA baselines: head_dim = D/H; RoPE on the LAST R dims of each q and k head;
    GQA: query head h reads key/value head h // (H / Hkv) (HF repeat_kv convention)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        D, H, Hkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads(), cfg.mha_head_dim()
        self.q_proj = linear(D, H * hd)
        self.k_proj = linear(D, Hkv * hd)
        self.v_proj = linear(D, Hkv * hd)
        self.o_proj = linear(H * hd, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        B, T, _ = x.shape
        H, Hkv, hd, R = cfg.num_attention_heads, cfg.kv_heads(), cfg.mha_head_dim(), cfg.mha_rope_dim()
        q = self.q_proj(x).view(B, T, H, hd)
        k = self.k_proj(x).view(B, T, Hkv, hd)
        v = self.v_proj(x).view(B, T, Hkv, hd)
        if R > 0:
            q = torch.cat([q[..., :hd - R], apply_rope(q[..., hd - R:], cfg.rope_theta)], dim=-1)
            k = torch.cat([k[..., :hd - R], apply_rope(k[..., hd - R:], cfg.rope_theta)], dim=-1)
        rep = H // Hkv
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        o = causal_attention(q, k, v, 1.0 / math.sqrt(hd))
        return self.o_proj(o.reshape(B, T, H * hd))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = linear(dim, hidden)
        self.up_proj = linear(dim, hidden)
        self.down_proj = linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def stable_topk_desc(x: torch.Tensor, k: int):
    """Top-k along the last dim, largest first, ties broken towards the lower index.
    Returns (values [.., k], indices [.., k], sorted values [.., n])."""
    vals, idx = torch.sort(x, dim=-1, descending=True, stable=True)
    return vals[..., :k], idx[..., :k], vals


def select_experts(s: torch.Tensor, bias: Optional[torch.Tensor], K: int, G: int, M: int,
                   margins: bool = True):
    """Group-limited top-K selection (GOLDEN.md "Router").
    s [N, E] unbiased scores; bias [E] or None (aux_free_bias off). Selection score sel = s (+ b).
    G > 1: group score = sum of the top-2 sel in the group with a bias, else the max; keep the best
    M groups, the other groups' experts get -inf; then top-K of sel. Ties -> lower index.
    Returns (topk_idx [N, K], margin_topk, margin_group): the smallest gap, over tokens, between the
    K-th and (K+1)-th selection score and between the M-th and (M+1)-th group score
    (inf when margins=False: no host synchronisation)."""
    N, E = s.shape
    sel = s.detach()
    if bias is not None:
        sel = sel + bias.to(sel.dtype)
    margin_group = math.inf
    if G > 1:
        grouped = sel.view(N, G, E // G)
        if bias is not None:
            top2 = torch.sort(grouped, dim=-1, descending=True).values[..., :min(2, E // G)]
            group_score = top2.sum(-1)                                          # [N, G]
        else:
            group_score = grouped.max(-1).values                                # [N, G]
        _, keep_groups, gsorted = stable_topk_desc(group_score, M)              # [N, M]
        if M < G and margins:
            margin_group = (gsorted[:, M - 1] - gsorted[:, M]).min().item()
        group_mask = torch.zeros(N, G, dtype=torch.bool, device=s.device)
        group_mask.scatter_(1, keep_groups, True)
        expert_mask = group_mask.repeat_interleave(E // G, dim=1)               # [N, E]
        sel = sel.masked_fill(~expert_mask, float("-inf"))
    _, topk_idx, ssorted = stable_topk_desc(sel, K)                             # [N, K]
    margin_topk = math.inf
    available = E if G == 1 else M * (E // G)
    if K < available and margins:
        margin_topk = (ssorted[:, K - 1] - ssorted[:, K]).min().item()
    return topk_idx, margin_topk, margin_group


class MoEGate(nn.Module):
    """Router: weight [E, D] (mlp.gate.weight) and the aux-loss-free bias buffer
    (mlp.gate.e_score_correction_bias, not a gradient parameter)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.hidden_size))
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts))


class MoE(nn.Module):
    """DeepSeekMoE: shared experts (one SwiGLU of width n_shared * F) + top-K routed experts.

    forward(x [B, T, D]) -> (y [B, T, D], info) where info holds, for this layer:
      load [E] (selections per expert, before capacity drops), dropped (0-dim tensor),
      seq_aux, aux, z (scalar loss terms, already multiplied by their coefficients; 0 when off),
      margin_topk, margin_group, margin_capacity (min over tokens/experts of the gap at each
      discrete decision; inf when the decision does not exist or track_margins is off).

    dispatch = "loop" (default, the reference: one gather per expert) or "sorted" (the bench:
    assignments sorted by expert, one host sync). On the CPU their forwards are bit-identical;
    their gradients agree to rounding (autograd sums the gathers' gradients in another order)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.dispatch = "loop"
        self.track_margins = True
        D, F_ = cfg.hidden_size, cfg.moe_intermediate_size
        self.gate = MoEGate(cfg)
        self.experts = nn.ModuleList([SwiGLU(D, F_) for _ in range(cfg.n_routed_experts)])
        if cfg.n_shared_experts > 0:
            self.shared_experts = SwiGLU(D, cfg.n_shared_experts * F_)

    # -- routing: which experts each token goes to (no gradient through the choice) --
    def select(self, s: torch.Tensor):
        """s [N, E] unbiased scores -> (topk_idx [N, K], margin_topk, margin_group)."""
        cfg = self.cfg
        bias = self.gate.e_score_correction_bias if cfg.aux_free_bias else None
        return select_experts(s, bias, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group,
                              self.track_margins)

    def capacity_keep(self, s: torch.Tensor, topk_idx: torch.Tensor):
        """kept [N, K] bool: each expert keeps its cap = ceil(c*N*K/E) assignments with the
        highest unbiased score s (ties: lower token index); the rest are dropped."""
        cfg = self.cfg
        N, K = topk_idx.shape
        E = cfg.n_routed_experts
        kept = torch.ones(N, K, dtype=torch.bool, device=s.device)
        margin = math.inf
        if cfg.capacity_factor <= 0:
            return kept, margin
        cap = math.ceil(cfg.capacity_factor * N * K / E)
        sd = s.detach()
        for e in range(E):
            tok, slot = torch.nonzero(topk_idx == e, as_tuple=True)  # tok ascending
            if tok.numel() <= cap:
                continue
            scores = sd[tok, e]
            vals, order = torch.sort(scores, descending=True, stable=True)  # stable: lower token first
            if self.track_margins:
                margin = min(margin, (vals[cap - 1] - vals[cap]).item())
            drop = order[cap:]
            kept[tok[drop], slot[drop]] = False
        return kept, margin

    def routed_loop(self, u, topk_idx, kept, g):
        """sum over kept (t, slot) of g[t, slot] * expert_{topk_idx[t, slot]}(u_t): a plain loop."""
        y = torch.zeros_like(u)
        for e in range(self.cfg.n_routed_experts):
            tok, slot = torch.nonzero((topk_idx == e) & kept, as_tuple=True)  # tok ascending
            if tok.numel() == 0:
                continue
            out = self.experts[e](u[tok]) * g[tok, slot].unsqueeze(-1)
            y = y.index_add(0, tok, out)
        return y

    def routed_sorted(self, u, topk_idx, kept, g):
        """The same sum with the kept assignments sorted by expert (stable: tokens ascending within
        an expert), one bincount, contiguous chunks per expert and a single index_add: each expert
        sees exactly the rows the loop gives it, and the rows are added in the same order, so the
        forward is bit-identical to routed_loop on the CPU."""
        E, K = self.cfg.n_routed_experts, topk_idx.shape[1]
        flat_e = topk_idx.reshape(-1)                                   # assignment a = t*K + slot
        a = torch.nonzero(kept.reshape(-1), as_tuple=True)[0]
        a = a[torch.sort(flat_e[a], stable=True).indices]
        tok, slot = a // K, a % K
        counts = torch.bincount(flat_e[a], minlength=E).tolist()       # the one host sync
        outs = [self.experts[e](chunk) for e, chunk in enumerate(u[tok].split(counts)) if counts[e] > 0]
        if not outs:
            return torch.zeros_like(u)
        out = torch.cat(outs) * g[tok, slot].unsqueeze(-1)
        return torch.zeros_like(u).index_add(0, tok, out)

    def forward(self, x: torch.Tensor):
        cfg = self.cfg
        B, T, D = x.shape
        N, E, K = B * T, cfg.n_routed_experts, cfg.num_experts_per_tok
        u = x.reshape(N, D)
        # router in (at least) fp32
        rdtype = torch.float64 if u.dtype == torch.float64 else torch.float32
        logits = F.linear(u.to(rdtype), self.gate.weight.to(rdtype))            # [N, E]
        s = torch.sigmoid(logits) if cfg.scoring_func == "sigmoid" else torch.softmax(logits, -1)

        topk_idx, margin_topk, margin_group = self.select(s)                    # [N, K]
        kept, margin_capacity = self.capacity_keep(s, topk_idx)                 # [N, K]

        # gate values from the unbiased scores; gradient reaches the router only through them
        g = s.gather(1, topk_idx)                                               # [N, K]
        if cfg.norm_topk_prob:
            g = g / (g.sum(-1, keepdim=True) + 1e-20)
        g = g * cfg.routed_scaling_factor
        g = g.to(u.dtype)

        # routed experts
        y = self.routed_loop(u, topk_idx, kept, g) if self.dispatch == "loop" \
            else self.routed_sorted(u, topk_idx, kept, g)
        if cfg.n_shared_experts > 0:
            y = y + self.shared_experts(u)

        # statistics and balance terms (selections counted before capacity drops)
        onehot = torch.zeros(N, E, dtype=s.dtype, device=s.device)
        onehot.scatter_(1, topk_idx, 1.0)                                       # [N, E]
        load = onehot.sum(0).round().long()
        dropped = (~kept).sum()
        zero = s.new_zeros(())
        seq_aux = aux = z = zero
        p = s / s.sum(-1, keepdim=True)                                         # [N, E]
        if cfg.seq_aux_loss_alpha > 0:
            f = onehot.view(B, T, E).sum(1) * (E / (K * T))                    # [B, E] constant
            P = p.view(B, T, E).mean(1)                                         # [B, E]
            seq_aux = cfg.seq_aux_loss_alpha * (f * P).sum(-1).mean()
        if cfg.aux_loss_alpha > 0:
            f = onehot.sum(0) * (E / (K * N))
            P = p.mean(0)
            aux = cfg.aux_loss_alpha * (f * P).sum()
        if cfg.router_z_loss_coef > 0:
            z = cfg.router_z_loss_coef * torch.logsumexp(logits, -1).pow(2).mean()
        info = dict(load=load, dropped=dropped, seq_aux=seq_aux, aux=aux, z=z,
                    margin_topk=margin_topk, margin_group=margin_group,
                    margin_capacity=margin_capacity, topk_idx=topk_idx, kept=kept,
                    scores=s.detach())
        return y.view(B, T, D), info


class DecoderLayer(nn.Module):
    """Pre-norm block: x += Attn(RMSNorm_in(x)); x += FFN(RMSNorm_post(x))."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLAttention(cfg) if cfg.attention == "mla" else MHAttention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.is_moe = cfg.is_moe_layer(layer_idx)
        self.mlp = MoE(cfg) if self.is_moe else SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor):
        x = x + self.self_attn(self.input_layernorm(x))
        info = None
        h = self.post_attention_layernorm(x)
        if self.is_moe:
            f, info = self.mlp(h)
        else:
            f = self.mlp(h)
        return x + f, info


class SharedHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MTPLayer(DecoderLayer):
    """MTP module k at HF layer L+k-1: h' = eh_proj([enorm(Emb(t_{i+k})) ; hnorm(h_i)]), one full
    block, then its own shared_head.norm before the shared LM head."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        D = cfg.hidden_size
        self.enorm = RMSNorm(D, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(D, cfg.rms_norm_eps)
        self.eh_proj = linear(2 * D, D)
        self.shared_head = SharedHead(cfg)

    def forward_mtp(self, emb: torch.Tensor, h: torch.Tensor):
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        return DecoderLayer.forward(self, x)


class Inner(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        L = cfg.num_hidden_layers
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        layers: List[nn.Module] = [DecoderLayer(cfg, l) for l in range(L)]
        layers += [MTPLayer(cfg, L + k) for k in range(cfg.num_nextn_predict_layers)]
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Twin(nn.Module):
    """The whole model. forward(tokens [B, T+1+D_mtp]) -> dict with logits and every loss."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.model = Inner(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = linear(cfg.hidden_size, cfg.vocab_size)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        w = self.model.embed_tokens.weight if self.cfg.tie_word_embeddings else self.lm_head.weight
        return F.linear(h, w)

    def moe_layers(self) -> Dict[int, MoE]:
        return {layer.layer_idx: layer.mlp for layer in self.model.layers if layer.is_moe}

    def forward(self, tokens: torch.Tensor) -> dict:
        cfg = self.cfg
        Dm = cfg.num_nextn_predict_layers
        B, W = tokens.shape
        T = W - 1 - Dm
        assert T >= 1, f"window {W} too short for depth {Dm}"
        V = cfg.vocab_size
        emb = self.model.embed_tokens

        def ce(logits, targets):
            return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))

        infos: Dict[int, dict] = {}
        h = emb(tokens[:, :T])
        for layer in self.model.layers[:cfg.num_hidden_layers]:
            h, info = layer(h)
            if info is not None:
                infos[layer.layer_idx] = info
        logits = self.head(self.model.norm(h))                                   # [B, T, V]
        loss_main = ce(logits, tokens[:, 1:T + 1])

        mtp_losses = []
        for k in range(1, Dm + 1):
            layer = self.model.layers[cfg.num_hidden_layers + k - 1]
            h, info = layer.forward_mtp(emb(tokens[:, k:T + k]), h)
            if info is not None:
                infos[layer.layer_idx] = info
            logits_k = self.head(layer.shared_head.norm(h))
            mtp_losses.append(ce(logits_k, tokens[:, k + 1:T + k + 1]))

        zero = loss_main.new_zeros(())
        seq_aux = sum((i["seq_aux"].to(zero.dtype) for i in infos.values()), zero)
        aux = sum((i["aux"].to(zero.dtype) for i in infos.values()), zero)
        z = sum((i["z"].to(zero.dtype) for i in infos.values()), zero)
        total = loss_main
        if Dm > 0:
            total = total + (cfg.mtp_loss_weight / Dm) * sum(mtp_losses)
        total = total + seq_aux + aux + z
        return dict(logits=logits, loss_total=total, loss_main=loss_main, loss_mtp=mtp_losses,
                    loss_seq_aux=seq_aux, loss_aux=aux, loss_z=z, router=infos)


# ----------------------------------------------------------------------------------------------
# Initialisation, optimizer, bias update, one training step
# ----------------------------------------------------------------------------------------------

def is_norm_param(name: str) -> bool:
    return name.endswith("norm.weight")  # *_layernorm, enorm, hnorm, shared_head.norm, model.norm


def no_weight_decay(name: str) -> bool:
    """Norms, embeddings and biases are not decayed (GOLDEN.md)."""
    return is_norm_param(name) or "embed_tokens" in name or name.endswith(".bias")


@torch.no_grad()
def init_weights(model: Twin, generator: torch.Generator, norm_perturb: float = 0.0,
                 bias_std: float = 0.0, f32_exact: bool = True) -> None:
    """Matrices ~ normal(0, initializer_range); norm weights 1 (+ norm_perturb * randn);
    e_score_correction_bias = bias_std * randn. Draws in named_parameters() order, then buffers.
    f32_exact: round every value to f32 so that a f32 reader starts from the same point."""
    std = model.cfg.initializer_range
    for name, p in model.named_parameters():
        if is_norm_param(name):
            v = 1.0 + norm_perturb * torch.randn(p.shape, generator=generator, dtype=torch.float64)
        else:
            v = std * torch.randn(p.shape, generator=generator, dtype=torch.float64)
        if f32_exact:
            v = v.float().double()
        p.copy_(v.to(p.dtype))
    for name, b in model.named_buffers():
        v = bias_std * torch.randn(b.shape, generator=generator, dtype=torch.float64)
        if f32_exact:
            v = v.float().double()
        b.copy_(v.to(b.dtype))


def make_adamw(model: Twin, lr: float = 1e-2, betas=(0.9, 0.95), eps: float = 1e-8,
               weight_decay: float = 0.1) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if no_weight_decay(name) else decay).append(p)
    groups = [dict(params=decay, weight_decay=weight_decay),
              dict(params=no_decay, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


@torch.no_grad()
def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Global-norm clipping: if ||g|| > max_norm, g *= max_norm / ||g|| (exactly; no epsilon).
    The norm is summed in float64; returns it (a 0-dim float64 tensor, before clipping)."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.stack([g.double().pow(2).sum() for g in grads]).sum().sqrt()
    scale = torch.clamp(max_norm / total, max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return total


@torch.no_grad()
def bias_update(model: Twin, loads: Dict[int, torch.Tensor]) -> None:
    """Aux-loss-free update after an optimizer step, per MoE layer:
    b_i += bias_update_speed * sign(mean(load) - load_i) (sign(0) = 0)."""
    cfg = model.cfg
    if not cfg.aux_free_bias:
        return
    for idx, moe in model.moe_layers().items():
        load = loads[idx].to(torch.float64)
        b = moe.gate.e_score_correction_bias
        b.add_((cfg.bias_update_speed * torch.sign(load.mean() - load)).to(b.dtype))


def train_step(model: Twin, opt: torch.optim.Optimizer, tokens: torch.Tensor,
               max_grad_norm: float = 1.0) -> dict:
    """zero grads, forward, backward, clip, AdamW step, bias update. Returns the forward's dict."""
    opt.zero_grad(set_to_none=True)
    out = model(tokens)
    out["loss_total"].backward()
    # A parameter no token reached (an idle expert) steps with a zero gradient, as in a flat
    # gradient buffer: its weight still decays and its moments still age (GOLDEN.md).
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    out["grad_norm"] = clip_grad_norm(list(model.parameters()), max_grad_norm)
    opt.step()
    bias_update(model, {l: i["load"] for l, i in out["router"].items()})
    return out


def set_moe_mode(model: Twin, dispatch: str = "loop", track_margins: bool = True) -> None:
    """dispatch "loop" | "sorted"; track_margins False avoids the host syncs of the margin stats."""
    assert dispatch in ("loop", "sorted"), dispatch
    for moe in model.moe_layers().values():
        moe.dispatch = dispatch
        moe.track_margins = track_margins


def min_margins(out: dict) -> dict:
    m = dict(topk=math.inf, group=math.inf, capacity=math.inf)
    for info in out["router"].values():
        m["topk"] = min(m["topk"], info["margin_topk"])
        m["group"] = min(m["group"], info["margin_group"])
        m["capacity"] = min(m["capacity"], info["margin_capacity"])
    return m
