// Linear: y = x W^T with W: [out, in] (no bias, as every projection in DeepSeek-V3), the HF
// nn.Linear layout. Contract (core/nn/context.h): backward OVERWRITES grad_x (skipped when
// grad_x is undefined) and ACCUMULATES grad_W.
#pragma once

#include <string>

#include "core/params.h"

namespace moelab {

class Linear {
 public:
  Linear() = default;
  // Declares `<name>.weight` [out, in] with normal(0, std) init.
  Linear(ParamBuffer& params, const std::string& name, int64_t in, int64_t out, double std, bool weight_decay = true);

  void forward(const Tensor& x, const Tensor& y) const;                               // x: [..., in] -> y: [..., out]
  void backward(const Tensor& x, const Tensor& grad_y, const Tensor& grad_x) const;  // grad_x: [..., in]

  Tensor weight() const { return params_->param(index_); }
  Tensor grad_weight() const { return params_->grad(index_); }
  int64_t in_features() const { return in_; }
  int64_t out_features() const { return out_; }

 private:
  const ParamBuffer* params_ = nullptr;
  size_t index_ = 0;
  int64_t in_ = 0, out_ = 0;
};

}  // namespace moelab
