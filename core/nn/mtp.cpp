// One MTP module (MODEL.md, "Multi-token prediction (MTP)"): h' = W_eh [enorm(emb) ; hnorm(h)], then
// one block; its backward splits the gradient of the concatenation back to the two inputs.
#include "core/nn/mtp.h"

#include "core/ops/columns.h"

namespace moelab {

MtpModule::MtpModule(ParamBuffer& params, ParamBuffer& buffers, const std::string& prefix, const ModelConfig& cfg)
    : dim_(cfg.hidden_size) {
  const int64_t D = cfg.hidden_size;
  enorm_ = RMSNorm(params, prefix + ".enorm", D, cfg.rms_norm_eps);
  hnorm_ = RMSNorm(params, prefix + ".hnorm", D, cfg.rms_norm_eps);
  eh_proj_ = Linear(params, prefix + ".eh_proj", 2 * D, D, cfg.initializer_range);
  block_ = Block(params, buffers, prefix, cfg, cfg.ffn == FfnKind::MoE);
  head_norm_ = RMSNorm(params, prefix + ".shared_head.norm", D, cfg.rms_norm_eps);
}

void MtpModule::forward(const Context& ctx, const Tensor& emb, const Tensor& h, const Tensor& out, Saved& s) const {
  const int64_t N = ctx.tokens(), D = dim_;
  Tensor e_normed = ctx.alloc({N, D}), h_normed = ctx.alloc({N, D});
  enorm_.forward(ctx, emb, e_normed, s.enorm);
  hnorm_.forward(ctx, h, h_normed, s.hnorm);
  s.cat = ctx.alloc({N, 2 * D});
  concat_columns(ctx, e_normed, h_normed, s.cat);
  s.h_in = ctx.alloc({N, D});
  eh_proj_.forward(ctx, s.cat, s.h_in);
  block_.forward(ctx, s.h_in, out, s.block);
}

void MtpModule::backward(const Context& ctx, const Saved& s, const Tensor& grad_out, double balance_grad_scale,
                         const Tensor& grad_emb, const Tensor& grad_h) const {
  const int64_t N = ctx.tokens(), D = dim_;
  Tensor grad_h_in = ctx.alloc({N, D}), grad_cat = ctx.alloc({N, 2 * D});
  block_.backward(ctx, s.block, grad_out, balance_grad_scale, grad_h_in);
  eh_proj_.backward(ctx, s.cat, grad_h_in, grad_cat);
  Tensor grad_e_normed = ctx.alloc({N, D}), grad_h_normed = ctx.alloc({N, D});
  split_columns(ctx, grad_cat, grad_e_normed, grad_h_normed);
  enorm_.backward(ctx, s.enorm, grad_e_normed, grad_emb);
  hnorm_.backward(ctx, s.hnorm, grad_h_normed, grad_h);
}

LayerCost MtpModule::cost(const CostShape& shape) const {
  const int64_t N = shape.tokens(), D = dim_;
  LayerCost c = enorm_.cost(shape);
  c += hnorm_.cost(shape);
  c += eh_proj_.cost(shape);
  c += block_.cost(shape);
  c += head_norm_.cost(shape);  // its rstd is allocated when the Model's loss head runs with it
  c.kv_cache_elements = c.kv_cache_mha_elements = 0;
  c.saved_per_token += 2 * D;  // cat (the block counts h_in, its input)
  auto rows = [&](int64_t width) { c.alloc(N * width, shape.act); };
  rows(D);      // e_normed
  rows(D);      // h_normed
  rows(2 * D);  // cat
  rows(D);      // h_in
  rows(D);      // grad_h_in
  rows(2 * D);  // grad_cat
  rows(D);      // grad_e_normed
  rows(D);      // grad_h_normed
  return c;
}

}  // namespace moelab
