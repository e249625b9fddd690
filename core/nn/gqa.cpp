#include "core/nn/gqa.h"

#include <cmath>
#include <sstream>

#include "core/ops/attention.h"
#include "core/ops/elementwise.h"
#include "core/ops/rope.h"

namespace moelab {

GQAttention::GQAttention(ParamBuffer& params, const std::string& prefix, const ModelConfig& cfg)
    : kind_(attention_kind_name(cfg.attention)),
      heads_(cfg.num_attention_heads),
      kv_heads_(cfg.kv_heads()),
      head_dim_(cfg.mha_head_dim()),
      rope_dim_(cfg.mha_rope_dim()),
      rope_theta_(cfg.rope_theta) {
  const int64_t d = cfg.hidden_size;
  const double std = cfg.initializer_range;
  q_proj_ = Linear(params, prefix + ".q_proj", d, heads_ * head_dim_, std);
  k_proj_ = Linear(params, prefix + ".k_proj", d, kv_heads_ * head_dim_, std);
  v_proj_ = Linear(params, prefix + ".v_proj", d, kv_heads_ * head_dim_, std);
  o_proj_ = Linear(params, prefix + ".o_proj", heads_ * head_dim_, d, std);
}

void GQAttention::forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& s) const {
  const int64_t B = ctx.batch, T = ctx.seq_len;
  s.x = x;
  s.q = ctx.alloc({B, T, heads_, head_dim_});
  s.k = ctx.alloc({B, T, kv_heads_, head_dim_});
  s.v = ctx.alloc({B, T, kv_heads_, head_dim_});
  s.out = ctx.alloc({B, T, heads_, head_dim_});
  s.lse = ctx.alloc_stat({B, heads_, T});
  const int64_t N = ctx.tokens();
  q_proj_.forward(ctx, x, s.q.as_rows(N));
  k_proj_.forward(ctx, x, s.k.as_rows(N));
  v_proj_.forward(ctx, x, s.v.as_rows(N));
  if (rope_dim_ > 0) {  // the last rope_dim_ dims of each head turn
    rope_forward(ctx, s.q, s.q, head_dim_ - rope_dim_, rope_dim_, rope_theta_);
    rope_forward(ctx, s.k, s.k, head_dim_ - rope_dim_, rope_dim_, rope_theta_);
  }
  {
    const PhaseScope phase(ctx.profiler, Phase::Attention);
    attention_forward(ctx, s.q, s.k, s.v, static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim_))), s.out,
                      s.lse);
  }
  o_proj_.forward(ctx, s.out.as_rows(N), y);
}

void GQAttention::backward(const Context& ctx, const Saved& s, const Tensor& grad_y, const Tensor& grad_x) const {
  const int64_t N = ctx.tokens();
  Tensor grad_out = ctx.alloc({N, heads_ * head_dim_});
  o_proj_.backward(ctx, s.out.as_rows(N), grad_y, grad_out);
  Tensor gq = ctx.alloc(s.q.shape()), gk = ctx.alloc(s.k.shape()), gv = ctx.alloc(s.v.shape());
  {
    const PhaseScope phase(ctx.profiler, Phase::Attention);
    attention_backward(ctx, grad_out.reshape(s.out.shape()), s.q, s.k, s.v, s.out, s.lse,
                       static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim_))), gq, gk, gv);
  }
  if (rope_dim_ > 0) {
    rope_backward(ctx, gq, gq, head_dim_ - rope_dim_, rope_dim_, rope_theta_);
    rope_backward(ctx, gk, gk, head_dim_ - rope_dim_, rope_dim_, rope_theta_);
  }
  Tensor gx_part = ctx.alloc(grad_x.shape());
  q_proj_.backward(ctx, s.x, gq.as_rows(N), grad_x);
  k_proj_.backward(ctx, s.x, gk.as_rows(N), gx_part);
  add(ctx, grad_x, gx_part, grad_x);
  v_proj_.backward(ctx, s.x, gv.as_rows(N), gx_part);
  add(ctx, grad_x, gx_part, grad_x);
}

LayerCost GQAttention::cost(const CostShape& shape) const {
  const int64_t N = shape.tokens(), D = o_proj_.out_features(), H = heads_, Hkv = kv_heads_, hd = head_dim_;
  LayerCost c;
  c += q_proj_.cost(shape);
  c += k_proj_.cost(shape);
  c += v_proj_.cost(shape);
  c += o_proj_.cost(shape);
  c += attention_scores_cost(dims(), shape);
  c.kv_cache_elements = 2 * Hkv * hd;  // k (after RoPE) and v of every kv head
  c.kv_cache_mha_elements = 2 * H * hd;
  c.saved_per_token = 2 * H * hd + 2 * Hkv * hd + H;  // q, out; k, v; lse
  // Forward's allocations, then backward's: [N, width] activations each.
  auto rows = [&](int64_t width) { c.alloc(N * width, shape.act); };
  rows(H * hd);                  // q
  rows(Hkv * hd);                // k
  rows(Hkv * hd);                // v
  rows(H * hd);                  // out
  c.alloc(N * H, shape.stat());  // lse [B, H, T]
  rows(H * hd);                  // grad_out
  rows(H * hd);                  // gq
  rows(Hkv * hd);                // gk
  rows(Hkv * hd);                // gv
  rows(D);                       // gx_part
  return c;
}

std::string GQAttention::describe() const {
  std::ostringstream os;
  os << "H=" << heads_ << " Hkv=" << kv_heads_ << " head_dim=" << head_dim_ << " rope_dim=" << rope_dim_;
  return os.str();
}

std::string GQAttention::kv_cache_formula() const {
  return std::string(kind_) + " keys and values per layer: 2 x Hkv " + std::to_string(kv_heads_) + " x head_dim " +
         std::to_string(head_dim_);
}

}  // namespace moelab
