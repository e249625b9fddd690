#include "core/nn/block.h"

#include "core/ops/elementwise.h"

namespace moelab {

Block::Block(ParamBuffer& params, ParamBuffer& buffers, const std::string& prefix, const ModelConfig& cfg, bool moe)
    : attention_(cfg.attention), is_moe_(moe), dim_(cfg.hidden_size) {
  attn_norm_ = RMSNorm(params, prefix + ".input_layernorm", cfg.hidden_size, cfg.rms_norm_eps);
  if (attention_ == AttentionKind::MLA) mla_ = MLAttention(params, prefix + ".self_attn", cfg);
  else gqa_ = GQAttention(params, prefix + ".self_attn", cfg);
  ffn_norm_ = RMSNorm(params, prefix + ".post_attention_layernorm", cfg.hidden_size, cfg.rms_norm_eps);
  if (is_moe_) moe_ = MoE(params, buffers, prefix + ".mlp", cfg);
  else mlp_ = SwiGLUMLP(params, prefix + ".mlp", cfg.hidden_size, cfg.intermediate_size, cfg.initializer_range);
}

void Block::forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& s) const {
  const Shape shape = x.shape();
  // h = x + Attn(RMSNorm_in(x)).
  Tensor normed = ctx.alloc(shape), branch = ctx.alloc(shape);
  attn_norm_.forward(ctx, x, normed, s.attn_norm);
  if (attention_ == AttentionKind::MLA) mla_.forward(ctx, normed, branch, s.mla);
  else gqa_.forward(ctx, normed, branch, s.gqa);
  Tensor h = ctx.alloc(shape);
  add(ctx, x, branch, h);
  // y = h + FFN(RMSNorm_post(h)).
  Tensor normed2 = ctx.alloc(shape), branch2 = ctx.alloc(shape);
  ffn_norm_.forward(ctx, h, normed2, s.ffn_norm);
  if (is_moe_) moe_.forward(ctx, normed2, branch2, s.moe);
  else mlp_.forward(ctx, normed2, branch2, s.mlp);
  add(ctx, h, branch2, y);
}

void Block::backward(const Context& ctx, const Saved& s, const Tensor& grad_y, double balance_grad_scale,
                     const Tensor& grad_x) const {
  const Shape shape = grad_y.shape();
  // Through the FFN branch: d h = grad_y + RMSNorm_post'(FFN'(grad_y)).
  Tensor g_normed2 = ctx.alloc(shape), g_h = ctx.alloc(shape);
  if (is_moe_) moe_.backward(ctx, s.moe, grad_y, balance_grad_scale, g_normed2);
  else mlp_.backward(ctx, s.mlp, grad_y, g_normed2);
  ffn_norm_.backward(ctx, s.ffn_norm, g_normed2, g_h);
  add(ctx, g_h, grad_y, g_h);
  // Through the attention branch: d x = d h + RMSNorm_in'(Attn'(d h)).
  Tensor g_normed = ctx.alloc(shape);
  if (attention_ == AttentionKind::MLA) mla_.backward(ctx, s.mla, g_h, g_normed);
  else gqa_.backward(ctx, s.gqa, g_h, g_normed);
  attn_norm_.backward(ctx, s.attn_norm, g_normed, grad_x);
  add(ctx, grad_x, g_h, grad_x);
}

LayerCost Block::attention_cost(const CostShape& shape) const {
  return with_attention([&](const auto& a) { return a.cost(shape); });
}
AttentionDims Block::attention_dims() const {
  return with_attention([](const auto& a) { return a.dims(); });
}
std::string Block::describe_attention() const {
  return with_attention([](const auto& a) { return a.describe(); });
}
std::string Block::kv_cache_formula() const {
  return with_attention([](const auto& a) { return a.kv_cache_formula(); });
}

LayerCost Block::cost(const CostShape& shape) const {
  const int64_t D = dim_;
  LayerCost c = attn_norm_.cost(shape);
  c += attention_cost(shape);
  c += ffn_norm_.cost(shape);
  c += is_moe_ ? moe_.cost(shape) : mlp_.cost(shape);
  c.saved_per_token += 4 * D;  // its input x, normed, h, normed2
  for (int i = 0; i < 5 + 3; ++i) c.alloc(shape.tokens() * D, shape.act);  // forward's 5, backward's 3
  return c;
}

}  // namespace moelab
