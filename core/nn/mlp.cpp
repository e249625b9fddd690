#include "core/nn/mlp.h"

#include "core/ops/elementwise.h"
#include "core/ops/swiglu.h"

namespace moelab {

SwiGLUMLP::SwiGLUMLP(ParamBuffer& params, const std::string& prefix, int64_t dim, int64_t hidden, double std)
    : gate_(params, prefix + ".gate_proj", dim, hidden, std),
      up_(params, prefix + ".up_proj", dim, hidden, std),
      down_(params, prefix + ".down_proj", hidden, dim, std) {}

void SwiGLUMLP::forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& s) const {
  const int64_t n = x.numel() / x.size(-1), f = hidden_size();
  s.x = x;
  s.gate = ctx.alloc({n, f});
  s.up = ctx.alloc({n, f});
  s.hidden = ctx.alloc({n, f});
  gate_.forward(ctx, x, s.gate);
  up_.forward(ctx, x, s.up);
  swiglu_forward(ctx, s.gate, s.up, s.hidden);
  down_.forward(ctx, s.hidden, y);
}

void SwiGLUMLP::backward(const Context& ctx, const Saved& s, const Tensor& grad_y, const Tensor& grad_x) const {
  const int64_t n = s.x.numel() / s.x.size(-1), f = hidden_size();
  Tensor grad_hidden = ctx.alloc({n, f}), grad_gate = ctx.alloc({n, f}), grad_up = ctx.alloc({n, f});
  down_.backward(ctx, s.hidden, grad_y, grad_hidden);
  swiglu_backward(ctx, grad_hidden, s.gate, s.up, grad_gate, grad_up);
  Tensor grad_x_up = ctx.alloc(grad_x.shape());
  gate_.backward(ctx, s.x, grad_gate, grad_x);
  up_.backward(ctx, s.x, grad_up, grad_x_up);
  add(ctx, grad_x, grad_x_up, grad_x);
}

LayerCost SwiGLUMLP::cost(const CostShape& shape) const {
  const int64_t n = shape.tokens(), f = hidden_size(), d = gate_.in_features();
  LayerCost c;
  c += gate_.cost(shape);
  c += up_.cost(shape);
  c += down_.cost(shape);
  c.saved_per_token = 3 * f;  // gate, up, hidden
  for (int i = 0; i < 3; ++i) c.alloc(n * f, shape.act);  // forward: gate, up, hidden
  for (int i = 0; i < 3; ++i) c.alloc(n * f, shape.act);  // backward: grad_hidden, grad_gate, grad_up
  c.alloc(n * d, shape.act);                              // grad_x_up
  return c;
}

}  // namespace moelab
