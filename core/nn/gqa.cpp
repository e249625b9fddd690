#include "core/nn/gqa.h"

#include <cmath>

#include "core/ops/attention.h"
#include "core/ops/elementwise.h"
#include "core/ops/rope.h"

namespace moelab {

GQAttention::GQAttention(ParamBuffer& params, const std::string& prefix, const ModelConfig& cfg)
    : heads_(cfg.num_attention_heads),
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
    attention_forward(ctx, s.q, s.k, s.v, static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim_))), s.out, s.lse);
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

}  // namespace moelab
