// Token embedding: out[n] = weight[ids[n]], weight [V, D] (HF `model.embed_tokens.weight`), not
// weight-decayed. Shared by the main model and every MTP module (and by the LM head when tied):
// each use's backward ACCUMULATES into the one gradient.
#pragma once

#include <string>

#include "core/nn/context.h"
#include "core/nn/cost.h"
#include "core/params.h"

namespace moelab {

class Embedding {
 public:
  Embedding() = default;
  Embedding(ParamBuffer& params, const std::string& name, int64_t vocab, int64_t dim, double std);

  // ids: i32 [B, T] -> out: [B, T, D]
  void forward(const Context& ctx, const Tensor& ids, const Tensor& out) const;
  // grad_weight += scatter(grad_out)
  void backward(const Context& ctx, const Tensor& ids, const Tensor& grad_out) const;
  // V x D parameters, all active (the convention counts the table, though a token reads one row); a
  // lookup is no FLOP, and its output is the caller's.
  LayerCost cost(const CostShape& shape) const;

  Tensor weight() const { return params_->compute(index_); }  // the compute copy (core/params.h)
  Tensor grad_weight() const { return params_->grad(index_); }

 private:
  const ParamBuffer* params_ = nullptr;
  size_t index_ = 0;
  int64_t vocab_ = 0, dim_ = 0;
};

}  // namespace moelab
