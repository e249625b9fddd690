#include "core/nn/linear.h"

#include "core/ops/bf16_matmul.h"
#include "core/ops/fp8_matmul.h"
#include "core/ops/matmul.h"

namespace moelab {

void linear_gemm_forward(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& y, bool fp8) {
  if (fp8 && ctx.fp8.enabled) fp8_matmul_forward(ctx, x, w, y, ctx.fp8);
  else if (ctx.cpu_bf16) bf16_matmul_forward(ctx, x, w, y);
  else matmul_forward(ctx, x, w, y);
}

void linear_gemm_backward(const Context& ctx, const Tensor& grad_y, const Tensor& x, const Tensor& w,
                          const Tensor& grad_x, const Tensor& grad_w, bool fp8) {
  if (fp8 && ctx.fp8.enabled) fp8_matmul_backward(ctx, grad_y, x, w, grad_x, grad_w, ctx.fp8);
  else if (ctx.cpu_bf16) bf16_matmul_backward(ctx, grad_y, x, w, grad_x, grad_w);
  else matmul_backward(ctx, grad_y, x, w, grad_x, grad_w);
}

Linear::Linear(ParamBuffer& params, const std::string& name, int64_t in, int64_t out, double std, bool weight_decay)
    : params_(&params), in_(in), out_(out) {
  index_ = params.declare({name + ".weight", {out, in}, Init::Normal, static_cast<float>(std), weight_decay});
}

void Linear::forward(const Context& ctx, const Tensor& x, const Tensor& y) const {
  const PhaseScope phase(ctx.profiler, Phase::DenseGemm, /*keep_router_or_expert=*/true);
  linear_gemm_forward(ctx, x, weight(), y, /*fp8=*/true);
}

void Linear::backward(const Context& ctx, const Tensor& x, const Tensor& grad_y, const Tensor& grad_x) const {
  const PhaseScope phase(ctx.profiler, Phase::DenseGemm, /*keep_router_or_expert=*/true);
  linear_gemm_backward(ctx, grad_y, x, weight(), grad_x, grad_weight(), /*fp8=*/true);
}

LayerCost Linear::cost(const CostShape&) const {
  LayerCost c;
  c.params = c.active_params = c.matmul_params = in_ * out_;
  c.gemm(Phase::DenseGemm, in_, out_);
  c.fp8_in = in_;
  c.fp8_out = out_;
  c.fp8_weights = in_ * out_;
  c.fp8_flops = c.training_flops();
  return c;
}

}  // namespace moelab
