// Launchers for MoE routing (core/ops/moe_route.h has the math, the tie rules and the contract).
// Every router tensor is f32 (scores, bias, topk_weights and their gradients), indices i32.
// Indices are not read on the host: an index outside [0, E) never makes a kernel read or write out
// of bounds; it turns the outputs of its row into NaN (gate forward/backward), and the capacity
// drop reports it through host_counts[E] without writing kept_idx.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

// The group scores and kept-group flags of moe_route_topk live in shared memory (8 bytes per group
// and per warp of the block); the op checks n_group against this bound.
constexpr int64_t kMoeRouteMaxGroups = 1024;

struct MoeRouteTopkParams {
  const float* scores = nullptr;  // [rows, E]
  const float* bias = nullptr;    // [E], or nullptr (no bias)
  int32_t* topk_idx = nullptr;    // [rows, K]
  int64_t rows = 0, E = 0, K = 0, n_group = 1, topk_group = 1;
  int64_t group_topk = 0;  // a group's score sums its group_topk best; 0: top 2 with a bias, max without
  Stream stream = nullptr;
};

struct MoeGateForwardParams {
  const float* scores = nullptr;      // [rows, E]
  const int32_t* topk_idx = nullptr;  // [rows, K]
  float* topk_weights = nullptr;      // [rows, K]
  int64_t rows = 0, E = 0, K = 0;
  bool norm_topk_prob = false;
  float scale = 1.0f;
  Stream stream = nullptr;
};

struct MoeGateBackwardParams {
  const float* grad_topk_weights = nullptr;  // [rows, K]
  const float* scores = nullptr;             // [rows, E]
  const int32_t* topk_idx = nullptr;         // [rows, K]
  float* grad_scores = nullptr;              // [rows, E], overwritten (zeros included)
  int64_t rows = 0, E = 0, K = 0;
  bool norm_topk_prob = false;
  float scale = 1.0f;
  Stream stream = nullptr;
};

struct MoeCapacityDropParams {
  const float* scores = nullptr;      // [rows, E]
  const int32_t* topk_idx = nullptr;  // [rows, K]
  int32_t* kept_idx = nullptr;        // [rows, K]
  int64_t rows = 0, E = 0, K = 0, capacity = 0;
  int32_t* workspace = nullptr;       // device i32 [moe_capacity_drop_workspace(rows * K, E)]
  int32_t* host_counts = nullptr;     // host [E + 1]: assignments per expert, then the number of indices out of [0, E)
  Stream stream = nullptr;
};

// i32 elements of MoeCapacityDropParams::workspace.
inline int64_t moe_capacity_drop_workspace(int64_t numel, int64_t E) { return 2 * (E + 1) + numel; }

void moe_route_topk(const MoeRouteTopkParams& p);
void moe_gate_forward(const MoeGateForwardParams& p);
void moe_gate_backward(const MoeGateBackwardParams& p);
// Groups the assignments by expert (cuda::moe_dispatch_layout), copies the counts to host_counts
// (waiting for the stream), and, only when every index is in [0, E), writes kept_idx. The number
// dropped is sum_e max(0, host_counts[e] - capacity).
void moe_capacity_drop(const MoeCapacityDropParams& p);

}  // namespace moelab::cuda
