// RMSNorm layer (MODEL.md, "Block structure"): y = x / rms(x) * weight, weight initialised to 1 and
// never weight-decayed. Contract (core/nn/context.h): backward OVERWRITES grad_x, ACCUMULATES
// grad_weight.
#pragma once

#include <string>

#include "core/nn/context.h"
#include "core/nn/cost.h"
#include "core/params.h"

namespace moelab {

class RMSNorm {
 public:
  struct Saved {
    Tensor x;     // [..., D] the input
    Tensor rstd;  // [N]
  };

  RMSNorm() = default;
  // Declares `<name>.weight` [dim].
  RMSNorm(ParamBuffer& params, const std::string& name, int64_t dim, double eps);

  void forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& saved) const;
  void backward(const Context& ctx, const Saved& saved, const Tensor& grad_y, const Tensor& grad_x) const;
  // dim parameters, no FLOPs (the convention), and rstd [N] from the arena (its input is the caller's).
  LayerCost cost(const CostShape& shape) const;

  Tensor weight() const { return params_->param(index_); }

 private:
  const ParamBuffer* params_ = nullptr;
  size_t index_ = 0;
  int64_t dim_ = 0;
  double eps_ = 1e-6;
};

}  // namespace moelab
