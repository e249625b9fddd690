// Launchers for MoE dispatch and combine (core/ops/moe_dispatch.h has the math and the contract).
// The activations (x, expert_x, expert_y, y and their gradients) are f32 or bf16 as `bf16` says;
// topk_weights and grad_topk_weights are f32 whatever the activations; pos and topk_idx are i32.
// Every sum runs in f32 in k order, one writer per output element: two runs give the same bits.
// pos is not read on the host (negative = not sent, as on the CPU): an entry >= M is never followed
// out of bounds; it turns the outputs of its token into NaN (dispatch backward, combine forward,
// grad_topk_weights) or is skipped (dispatch forward, grad_expert_y).
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

// moe_dispatch_layout keeps one counter per expert in shared memory, next to an 8 KiB tile
// (48 KiB default limit).
constexpr int64_t kMoeLayoutMaxExperts = 8192;

// A stable counting sort of the assignments by expert: rows of expert 0 first, within an expert in
// assignment order i = n * K + k. One block: a histogram, then one warp places 32 assignments a
// step from tiles the block stages in shared memory.
struct MoeDispatchLayoutParams {
  const int32_t* topk_idx = nullptr;  // [numel]
  int64_t numel = 0, num_experts = 0;
  int32_t min_index = 0;              // -1: -1 means "not sent" and is allowed; 0: every entry must be an expert
  int32_t* pos = nullptr;             // [numel] or nullptr: the row of assignment i, -1 when not sent (or invalid)
  int32_t* order = nullptr;           // [rows] or nullptr: order[pos[i]] = i
  int32_t* counts = nullptr;          // device [E + 1]: assignments per expert, then the entries outside [min_index, E)
  int32_t* offsets = nullptr;         // device [E + 1] or nullptr: exclusive prefix sums of counts[0..E)
  int32_t* host_counts = nullptr;     // host [E + 1] or nullptr: a copy of counts (the call waits for the stream)
  double* counts_f64 = nullptr;       // device [E] or nullptr: counts[0..E) as f64, every one NaN when an entry
                                      // was outside [min_index, E) (no copy, no wait)
  Stream stream = nullptr;
};

struct MoeDispatchForwardParams {
  const void* x = nullptr;         // [N, D]
  const int32_t* pos = nullptr;    // [N, K]
  void* expert_x = nullptr;        // [M, D]
  int64_t N = 0, K = 0, D = 0, M = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct MoeDispatchBackwardParams {
  const void* grad_expert_x = nullptr;  // [M, D]
  const int32_t* pos = nullptr;         // [N, K]
  void* grad_x = nullptr;               // [N, D], overwritten
  int64_t N = 0, K = 0, D = 0, M = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct MoeCombineForwardParams {
  const void* expert_y = nullptr;        // [M, D]
  const int32_t* pos = nullptr;          // [N, K]
  const float* topk_weights = nullptr;   // [N, K]
  void* y = nullptr;                     // [N, D], overwritten
  int64_t N = 0, K = 0, D = 0, M = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct MoeCombineBackwardParams {
  const void* grad_y = nullptr;          // [N, D]
  const void* expert_y = nullptr;        // [M, D]
  const int32_t* pos = nullptr;          // [N, K]
  const float* topk_weights = nullptr;   // [N, K]
  void* grad_expert_y = nullptr;         // [M, D], overwritten
  float* grad_topk_weights = nullptr;    // [N, K], overwritten
  int64_t N = 0, K = 0, D = 0, M = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

void moe_dispatch_layout(const MoeDispatchLayoutParams& p);
void moe_dispatch_forward(const MoeDispatchForwardParams& p);
void moe_dispatch_backward(const MoeDispatchBackwardParams& p);
void moe_combine_forward(const MoeCombineForwardParams& p);
void moe_combine_backward(const MoeCombineBackwardParams& p);

}  // namespace moelab::cuda
