// SwiGLU MLP (MODEL.md): y = down(silu(gate(x)) * up(x)), width F. The dense FFN
// (`mlp.gate_proj/up_proj/down_proj`), the shared experts (`mlp.shared_experts.*`, F =
// n_shared_experts * moe_intermediate_size) and every routed expert (`mlp.experts.{e}.*`) are this
// layer. Contract (core/nn/context.h): backward OVERWRITES grad_x, ACCUMULATES the weight grads.
#pragma once

#include <string>

#include "core/nn/context.h"
#include "core/nn/cost.h"
#include "core/nn/linear.h"

namespace moelab {

class SwiGLUMLP {
 public:
  struct Saved {
    Tensor x;           // [N, D]
    Tensor gate, up;    // [N, F] pre-activation
    Tensor hidden;      // [N, F] silu(gate) * up
  };

  SwiGLUMLP() = default;
  // Declares <prefix>.gate_proj/up_proj/down_proj.weight.
  SwiGLUMLP(ParamBuffer& params, const std::string& prefix, int64_t dim, int64_t hidden, double std);

  void forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& saved) const;  // x, y: [N, D]
  void backward(const Context& ctx, const Saved& saved, const Tensor& grad_y, const Tensor& grad_x) const;

  int64_t hidden_size() const { return gate_.out_features(); }
  int64_t flat_offset() const { return gate_.flat_offset(); }  // the first of its three weights
  // Three projections in Phase::DenseGemm (the MoE moves its experts' to ExpertGemm); the arena
  // holds gate, up, hidden [N, F] forward and their three gradients and one [N, D] backward, for
  // N = shape.tokens() rows.
  LayerCost cost(const CostShape& shape) const;
  // Arena bytes of forward alone (gate, up, hidden), what generation runs (core/nn/decode.cpp).
  int64_t decode_bytes(const CostShape& shape) const;

 private:
  Linear gate_, up_, down_;
};

}  // namespace moelab
