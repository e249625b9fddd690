#include "core/nn/norm.h"

#include "core/ops/rmsnorm.h"

namespace moelab {

RMSNorm::RMSNorm(ParamBuffer& params, const std::string& name, int64_t dim, double eps)
    : params_(&params), dim_(dim), eps_(eps) {
  index_ = params.declare({name + ".weight", {dim}, Init::Ones, 0.0f, /*weight_decay=*/false});
}

void RMSNorm::forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& saved) const {
  saved.x = x;
  saved.rstd = ctx.alloc_stat({x.numel() / x.size(-1)});
  rmsnorm_forward(ctx, x, weight(), static_cast<float>(eps_), y, saved.rstd);
}

void RMSNorm::backward(const Context& ctx, const Saved& saved, const Tensor& grad_y, const Tensor& grad_x) const {
  rmsnorm_backward(ctx, grad_y, saved.x, weight(), saved.rstd, grad_x, params_->grad(index_));
}

LayerCost RMSNorm::cost(const CostShape& shape) const {
  LayerCost c;
  c.params = c.active_params = dim_;
  c.saved_per_token = 1;  // rstd
  c.alloc(shape.tokens(), shape.stat());
  return c;
}

}  // namespace moelab
