#include "core/nn/mla.h"

#include <cmath>
#include <sstream>

#include "core/ops/attention.h"
#include "core/ops/columns.h"
#include "core/ops/elementwise.h"
#include "core/ops/mla_kv.h"
#include "core/ops/rope.h"

namespace moelab {

MLAttention::MLAttention(ParamBuffer& params, const std::string& prefix, const ModelConfig& cfg)
    : heads_(cfg.num_attention_heads),
      q_rank_(cfg.q_lora_rank),
      kv_rank_(cfg.kv_lora_rank),
      nope_(cfg.qk_nope_head_dim),
      rope_(cfg.qk_rope_head_dim),
      v_dim_(cfg.v_head_dim),
      rope_theta_(cfg.rope_theta) {
  const int64_t d = cfg.hidden_size, qk = nope_ + rope_;
  const double std = cfg.initializer_range;
  if (q_rank_ > 0) {
    q_a_proj_ = Linear(params, prefix + ".q_a_proj", d, q_rank_, std);
    q_a_norm_ = RMSNorm(params, prefix + ".q_a_layernorm", q_rank_, cfg.rms_norm_eps);
    q_b_proj_ = Linear(params, prefix + ".q_b_proj", q_rank_, heads_ * qk, std);
  } else {
    q_proj_ = Linear(params, prefix + ".q_proj", d, heads_ * qk, std);
  }
  kv_a_proj_ = Linear(params, prefix + ".kv_a_proj_with_mqa", d, kv_rank_ + rope_, std);
  kv_a_norm_ = RMSNorm(params, prefix + ".kv_a_layernorm", kv_rank_, cfg.rms_norm_eps);
  kv_b_proj_ = Linear(params, prefix + ".kv_b_proj", kv_rank_, heads_ * (nope_ + v_dim_), std);
  o_proj_ = Linear(params, prefix + ".o_proj", heads_ * v_dim_, d, std);
}

float MLAttention::scale() const { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(nope_ + rope_))); }

void MLAttention::forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& s) const {
  const int64_t B = ctx.batch, T = ctx.seq_len, N = ctx.tokens();
  s.x = x;
  // Query: through the compressed latent when q_lora_rank > 0.
  s.q = ctx.alloc({B, T, heads_, nope_ + rope_});
  if (q_rank_ > 0) {
    Tensor cq_raw = ctx.alloc({N, q_rank_});
    s.cq = ctx.alloc({N, q_rank_});
    q_a_proj_.forward(ctx, x, cq_raw);
    q_a_norm_.forward(ctx, cq_raw, s.cq, s.q_norm);
    q_b_proj_.forward(ctx, s.cq, s.q.as_rows(N));
  } else {
    q_proj_.forward(ctx, x, s.q.as_rows(N));
  }
  rope_forward(ctx, s.q, s.q, nope_, rope_, rope_theta_);
  // Keys and values: one latent and one rope key per token, expanded per head.
  Tensor kva = ctx.alloc({N, kv_rank_ + rope_}), ckv_raw = ctx.alloc({N, kv_rank_}), kr = ctx.alloc({B, T, 1, rope_});
  kv_a_proj_.forward(ctx, x, kva);
  split_columns(ctx, kva, ckv_raw, kr.as_rows(N));
  s.ckv = ctx.alloc({N, kv_rank_});
  kv_a_norm_.forward(ctx, ckv_raw, s.ckv, s.kv_norm);
  rope_forward(ctx, kr, kr, 0, rope_, rope_theta_);
  Tensor kv = ctx.alloc({N, heads_, nope_ + v_dim_});
  kv_b_proj_.forward(ctx, s.ckv, kv.as_rows(N));
  s.k = ctx.alloc({B, T, heads_, nope_ + rope_});
  s.v = ctx.alloc({B, T, heads_, v_dim_});
  mla_kv_forward(ctx, kv, kr, heads_, nope_, s.k, s.v);
  s.out = ctx.alloc({B, T, heads_, v_dim_});
  s.lse = ctx.alloc_stat({B, heads_, T});
  {
    const PhaseScope phase(ctx.profiler, Phase::Attention);
    attention_forward(ctx, s.q, s.k, s.v, scale(), s.out, s.lse);
  }
  o_proj_.forward(ctx, s.out.as_rows(N), y);
}

void MLAttention::backward(const Context& ctx, const Saved& s, const Tensor& grad_y, const Tensor& grad_x) const {
  const int64_t N = ctx.tokens();
  Tensor grad_out = ctx.alloc(s.out.shape());
  o_proj_.backward(ctx, s.out.as_rows(N), grad_y, grad_out.as_rows(N));
  Tensor gq = ctx.alloc(s.q.shape()), gk = ctx.alloc(s.k.shape()), gv = ctx.alloc(s.v.shape());
  {
    const PhaseScope phase(ctx.profiler, Phase::Attention);
    attention_backward(ctx, grad_out, s.q, s.k, s.v, s.out, s.lse, scale(), gq, gk, gv);
  }

  // Key/value path back to x.
  Tensor gkv = ctx.alloc({N, heads_, nope_ + v_dim_}), gkr = ctx.alloc({N, rope_});
  mla_kv_backward(ctx, gk, gv, heads_, nope_, gkv, gkr);
  rope_backward(ctx, gkr.reshape({ctx.batch, ctx.seq_len, 1, rope_}), gkr.reshape({ctx.batch, ctx.seq_len, 1, rope_}),
                0, rope_, rope_theta_);
  Tensor gckv = ctx.alloc({N, kv_rank_}), gckv_raw = ctx.alloc({N, kv_rank_}), gkva = ctx.alloc({N, kv_rank_ + rope_});
  kv_b_proj_.backward(ctx, s.ckv, gkv.as_rows(N), gckv);
  kv_a_norm_.backward(ctx, s.kv_norm, gckv, gckv_raw);
  concat_columns(ctx, gckv_raw, gkr, gkva);
  kv_a_proj_.backward(ctx, s.x, gkva, grad_x);

  // Query path back to x, added to the kv path's gradient.
  rope_backward(ctx, gq, gq, nope_, rope_, rope_theta_);
  Tensor gx_q = ctx.alloc(grad_x.shape());
  if (q_rank_ > 0) {
    Tensor gcq = ctx.alloc({N, q_rank_}), gcq_raw = ctx.alloc({N, q_rank_});
    q_b_proj_.backward(ctx, s.cq, gq.as_rows(N), gcq);
    q_a_norm_.backward(ctx, s.q_norm, gcq, gcq_raw);
    q_a_proj_.backward(ctx, s.x, gcq_raw, gx_q);
  } else {
    q_proj_.backward(ctx, s.x, gq.as_rows(N), gx_q);
  }
  add(ctx, grad_x, gx_q, grad_x);
}

LayerCost MLAttention::cost(const CostShape& shape) const {
  const int64_t N = shape.tokens(), D = o_proj_.out_features(), H = heads_, qk = nope_ + rope_;
  const DType act = shape.act;
  LayerCost c;
  if (q_rank_ > 0) {
    c += q_a_proj_.cost(shape);
    c += q_a_norm_.cost(shape);
    c += q_b_proj_.cost(shape);
  } else {
    c += q_proj_.cost(shape);
  }
  c += kv_a_proj_.cost(shape);
  c += kv_a_norm_.cost(shape);
  c += kv_b_proj_.cost(shape);
  c += o_proj_.cost(shape);
  c += attention_scores_cost(dims(), shape);
  // Generation caches the normalised latent and the turned rope key, nothing per head.
  c.kv_cache_elements = kv_rank_ + rope_;
  c.kv_cache_mha_elements = H * qk + H * v_dim_;
  // Saved for backward (the norms add their rstd): cq_raw and cq, ckv_raw and ckv, q, k, v, out, lse.
  c.saved_per_token += (q_rank_ > 0 ? 2 * q_rank_ : 0) + 2 * kv_rank_ + 2 * H * qk + 2 * H * v_dim_ + H;
  // Forward's allocations, in forward's order, then backward's: [N, width] activations each.
  auto rows = [&](int64_t width) { c.alloc(N * width, act); };
  rows(H * qk);                           // q
  if (q_rank_ > 0) {
    rows(q_rank_);                        // cq_raw
    rows(q_rank_);                        // cq
  }
  rows(kv_rank_ + rope_);                 // kva
  rows(kv_rank_);                         // ckv_raw
  rows(rope_);                            // kr
  rows(kv_rank_);                         // ckv
  rows(H * (nope_ + v_dim_));             // kv
  rows(H * qk);                           // k
  rows(H * v_dim_);                       // v
  rows(H * v_dim_);                       // out
  c.alloc(N * H, shape.stat());           // lse [B, H, T]
  rows(H * v_dim_);                       // grad_out
  rows(H * qk);                           // gq
  rows(H * qk);                           // gk
  rows(H * v_dim_);                       // gv
  rows(H * (nope_ + v_dim_));             // gkv
  rows(rope_);                            // gkr
  rows(kv_rank_);                         // gckv
  rows(kv_rank_);                         // gckv_raw
  rows(kv_rank_ + rope_);                 // gkva
  rows(D);                                // gx_q
  if (q_rank_ > 0) {
    rows(q_rank_);                        // gcq
    rows(q_rank_);                        // gcq_raw
  }
  return c;
}

std::string MLAttention::describe() const {
  std::ostringstream os;
  os << "H=" << heads_ << " Cq=" << q_rank_ << " Ckv=" << kv_rank_ << " Dn=" << nope_ << " Dr=" << rope_
     << " Dv=" << v_dim_;
  return os.str();
}

std::string MLAttention::kv_cache_formula() const {
  return "MLA latent Ckv + rope key Dr per layer: (" + std::to_string(kv_rank_) + " + " + std::to_string(rope_) + ")";
}

}  // namespace moelab
