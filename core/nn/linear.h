// Linear: y = x W^T with W: [out, in] (no bias, as every projection in DeepSeek-V3), the HF
// nn.Linear layout. Contract (core/nn/context.h): backward OVERWRITES grad_x (skipped when
// grad_x is undefined) and ACCUMULATES grad_W.
// The GEMMs use the parameter buffer's compute copy of W (bf16 in mixed precision, else the
// parameter itself: core/params.h); the gradient goes to the f32 gradient buffer. With ctx.fp8 on,
// all three are FP8 GEMMs (core/ops/fp8_matmul.h); with ctx.cpu_bf16, bf16-operand GEMMs
// (core/ops/bf16_matmul.h). The LM head goes through linear_gemm_* without FP8 (it stays in the
// activation precision, as in DeepSeek-V3); the router calls matmul itself (f32 always).
#pragma once

#include <string>

#include "core/nn/context.h"
#include "core/nn/cost.h"
#include "core/params.h"

namespace moelab {

// y = x w^T and its backward in the context's GEMM precision: FP8 when ctx.fp8 is on and `fp8`
// allows it, bf16 operands when ctx.cpu_bf16, else matmul (the activation dtype).
void linear_gemm_forward(const Context& ctx, const Tensor& x, const Tensor& w, const Tensor& y, bool fp8);
void linear_gemm_backward(const Context& ctx, const Tensor& grad_y, const Tensor& x, const Tensor& w,
                          const Tensor& grad_x, const Tensor& grad_w, bool fp8);

class Linear {
 public:
  Linear() = default;
  // Declares `<name>.weight` [out, in] with normal(0, std) init.
  Linear(ParamBuffer& params, const std::string& name, int64_t in, int64_t out, double std, bool weight_decay = true);

  // x: [..., in] -> y: [..., out]
  void forward(const Context& ctx, const Tensor& x, const Tensor& y) const;
  // grad_y: [..., out] -> grad_x: [..., in]
  void backward(const Context& ctx, const Tensor& x, const Tensor& grad_y, const Tensor& grad_x) const;
  // in x out parameters and one GEMM per token in Phase::DenseGemm; nothing from the arena.
  LayerCost cost(const CostShape& shape) const;

  Tensor weight() const { return params_->compute(index_); }       // what the GEMMs read
  Tensor master_weight() const { return params_->param(index_); }  // f32 (f64 in checks)
  Tensor grad_weight() const { return params_->grad(index_); }
  int64_t flat_offset() const { return params_->entries()[index_].offset; }  // of W in the flat buffers
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  const ParamBuffer* params_ = nullptr;
  size_t index_ = 0;
  int64_t in_ = 0, out_ = 0;
};

}  // namespace moelab
