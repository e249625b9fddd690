// Helpers for layer-level gradient checks: every parameter of a ParamBuffer against central
// finite differences, with the accumulate contract checked on the way (gradients start from
// random values and only the added part is compared).
#pragma once

#include <functional>
#include <string>

#include "core/nn/config.h"
#include "core/params.h"
#include "tests/harness.h"

namespace moelab::testing {

// A tiny MLA + MoE model for whole-model tests (gradient checks, decode): odd dims, large weights
// (initializer_range 0.5) so that every path carries a gradient well above finite-difference
// noise and logits are far from ties.
inline ModelConfig tiny_model_config() {
  ModelConfig c;
  c.vocab_size = 13;
  c.hidden_size = 8;
  c.num_hidden_layers = 2;
  c.max_position_embeddings = 16;
  c.initializer_range = 0.5;
  c.num_attention_heads = 2;
  c.kv_lora_rank = 6;
  c.qk_nope_head_dim = 3;
  c.qk_rope_head_dim = 2;
  c.v_head_dim = 3;
  c.num_key_value_heads = 2;
  c.intermediate_size = 7;
  c.moe_intermediate_size = 3;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 1;
  return c;
}

// loss(): runs a forward pass (resetting its own arena) and returns the scalar loss.
// backward(): runs forward + backward once, accumulating parameter gradients into params' grads.
// Checks d loss / d p for every parameter p (f64 buffers). Returns the first failure, naming it.
// max_per_tensor > 0 checks only that many elements of each parameter (a fixed spread of indices,
// always including the first and the last), which keeps whole-model checks fast while still
// touching every parameter tensor.
inline ::testing::AssertionResult check_param_grads(const ParamBuffer& params, const std::function<double()>& loss,
                                                    const std::function<void()>& backward,
                                                    double atol = kGradAtol, double rtol = kGradRtol,
                                                    int64_t max_per_tensor = 0) {
  Tensor before = randn(params.flat_grads().shape(), DType::F64, 987654);
  params.flat_grads().copy_from(before);
  backward();
  for (const auto& e : params.entries()) {
    const Tensor g = params.grad(e.spec.name);
    Tensor added = Tensor::empty(g.shape(), DType::F64);
    const double* pb = before.data<double>() + e.offset;
    for (int64_t i = 0; i < g.numel(); ++i) added.data<double>()[i] = g.data<double>()[i] - pb[i];
    const Tensor p = params.param(e.spec.name);
    const int64_t n = p.numel();
    if (max_per_tensor <= 0 || n <= max_per_tensor) {
      auto r = check_grad(p, added, loss, atol, rtol);
      if (!r) return ::testing::AssertionFailure() << e.spec.name << ": " << r.message();
      continue;
    }
    for (int64_t j = 0; j < max_per_tensor; ++j) {
      const int64_t i = j * (n - 1) / (max_per_tensor - 1);  // evenly spread, first and last included
      Tensor one = p.reshape({n}).slice(i, i + 1), analytic = added.reshape({n}).slice(i, i + 1);
      auto r = check_grad(one, analytic, loss, atol, rtol);
      if (!r) return ::testing::AssertionFailure() << e.spec.name << " element " << i << ": " << r.message();
    }
  }
  return ::testing::AssertionSuccess() << params.entries().size() << " parameters checked";
}

}  // namespace moelab::testing
