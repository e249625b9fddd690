// LayerCost arithmetic and the two shared counts: one arena allocation and causal attention's scores.
#include "core/nn/cost.h"

#include "core/arena.h"

namespace moelab {

namespace {
size_t index(Phase p) { return static_cast<size_t>(p); }
}  // namespace

LayerCost& LayerCost::operator+=(const LayerCost& o) {
  params += o.params;
  active_params += o.active_params;
  matmul_params += o.matmul_params;
  for (size_t p = 0; p < forward_flops.size(); ++p) {
    forward_flops[p] += o.forward_flops[p];
    backward_flops[p] += o.backward_flops[p];
  }
  kv_cache_elements += o.kv_cache_elements;
  kv_cache_mha_elements += o.kv_cache_mha_elements;
  saved_per_token += o.saved_per_token;
  activation_bytes += o.activation_bytes;
  fp8_in += o.fp8_in;
  fp8_out += o.fp8_out;
  fp8_weights += o.fp8_weights;
  fp8_flops += o.fp8_flops;
  return *this;
}

int64_t arena_alloc_bytes(int64_t numel, DType dtype) {
  constexpr auto kAlign = static_cast<int64_t>(Arena::kAlignment);
  const int64_t bytes = numel * static_cast<int64_t>(dtype_size(dtype));
  return (bytes + kAlign - 1) / kAlign * kAlign;
}

void LayerCost::alloc(int64_t numel, DType dtype) { activation_bytes += arena_alloc_bytes(numel, dtype); }

void LayerCost::alloc_split(int64_t numel, DType dtype, int64_t pieces) {
  activation_bytes += numel * static_cast<int64_t>(dtype_size(dtype)) +
                      pieces * static_cast<int64_t>(Arena::kAlignment - 1);
}

void LayerCost::gemm(Phase p, int64_t in, int64_t out) {
  const double forward = 2.0 * static_cast<double>(in) * static_cast<double>(out);
  forward_flops[index(p)] += forward;
  backward_flops[index(p)] += 2 * forward;  // grad_x = grad_y W and grad_W = grad_y^T x
}

void LayerCost::move_flops(Phase from, Phase to) {
  if (from == to) return;
  forward_flops[index(to)] += forward_flops[index(from)];
  backward_flops[index(to)] += backward_flops[index(from)];
  forward_flops[index(from)] = backward_flops[index(from)] = 0;
}

double LayerCost::flops(Phase p) const { return forward_flops[index(p)] + backward_flops[index(p)]; }

double LayerCost::training_flops() const {
  double total = 0;
  for (size_t p = 0; p < forward_flops.size(); ++p) total += forward_flops[p] + backward_flops[p];
  return total;
}

LayerCost attention_scores_cost(const AttentionDims& d, const CostShape& s) {
  LayerCost c;
  // Per token: H heads x T keys x (Dqk + Dv) multiply-adds over the full square = 2 x that in FLOPs;
  // the causal mask leaves half of it.
  const double half = static_cast<double>(d.heads) * static_cast<double>(s.seq_len) *
                      static_cast<double>(d.qk_dim + d.v_dim);
  c.forward_flops[index(Phase::Attention)] = half;
  c.backward_flops[index(Phase::Attention)] = 2 * half;
  return c;
}

}  // namespace moelab
