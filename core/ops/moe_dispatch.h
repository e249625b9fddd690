// MoE dispatch and combine on one process (MODEL.md, "DeepSeekMoE": y = sum_k g_k FFN_{e_k}(u)):
// token rows are copied into one buffer grouped by expert, so that each expert runs ONE GEMM
// chain over its rows, and the expert outputs are gathered back and summed with the gate weights.
//
//   moe_dispatch_layout   pos[n, k] = the row of expert_x that assignment (n, k) occupies: rows of
//                         expert 0 first, then expert 1, ...; within an expert in token order
//                         (n, then k). pos = -1 where topk_idx = -1 (dropped by the capacity).
//                         Returns num_tokens_per_expert [E] (the rows of each expert).
//   moe_dispatch_forward  expert_x[pos[n, k], :] = x[n, :]
//   moe_dispatch_backward grad_x[n, :] = sum_{k: pos[n, k] >= 0} grad_expert_x[pos[n, k], :]
//                         (a token whose every assignment was dropped gets a zero row)
//   moe_combine_forward   y[n, :] = sum_{k: pos[n, k] >= 0} topk_weights[n, k] * expert_y[pos[n, k], :]
//   moe_combine_backward  grad_expert_y[pos[n, k], :] = topk_weights[n, k] * grad_y[n, :]
//                         grad_topk_weights[n, k] = <grad_y[n, :], expert_y[pos[n, k], :]>, 0 if dropped
//
// Shapes: x, grad_x, y, grad_y: [N, D]   topk_idx, pos: i32 [N, K]   topk_weights, grad_topk_weights: [N, K]
//         expert_x, expert_y and their gradients: [M, D], M = the number of entries pos >= 0.
// pos must map the kept assignments one to one onto the M rows (what moe_dispatch_layout makes);
// the Tensor API checks it, so every output row is written.
// Contract: every output is OVERWRITTEN (all of it).
// Dtypes: CPU: the float tensors all f32 or all f64; indices i32.
//        CUDA: x, expert_x, expert_y, y and their gradients all f32 or all bf16 (sums in f32);
//        topk_weights and grad_topk_weights f32 whatever the activations; indices i32. pos is not
//        read on the host there (it comes from moe_dispatch_layout on the device): an entry >= M is
//        never followed out of bounds and turns its token's outputs into NaN (see cuda/moe_dispatch.h).
//        The CUDA moe_dispatch_layout takes its E + 1 device counters from ex.scratch (core/exec.h).
#pragma once

#include <cstdint>
#include <vector>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

std::vector<int64_t> moe_dispatch_layout(const Exec& ex, const Tensor& topk_idx, int64_t num_experts,
                                         const Tensor& pos);
void moe_dispatch_forward(const Exec& ex, const Tensor& x, const Tensor& pos, const Tensor& expert_x);
void moe_dispatch_backward(const Exec& ex, const Tensor& grad_expert_x, const Tensor& pos, const Tensor& grad_x);
void moe_combine_forward(const Exec& ex, const Tensor& expert_y, const Tensor& pos, const Tensor& topk_weights,
                         const Tensor& y);
void moe_combine_backward(const Exec& ex, const Tensor& grad_y, const Tensor& expert_y, const Tensor& pos,
                          const Tensor& topk_weights, const Tensor& grad_expert_y, const Tensor& grad_topk_weights);

namespace ref {
// The references trust pos (the Tensor API checks it). N tokens, K slots, D columns.
template <typename T>
void moe_dispatch_forward(const T* x, const int32_t* pos, T* expert_x, int64_t N, int64_t K, int64_t D);
template <typename T>
void moe_dispatch_backward(const T* grad_expert_x, const int32_t* pos, T* grad_x, int64_t N, int64_t K, int64_t D);
template <typename T>
void moe_combine_forward(const T* expert_y, const int32_t* pos, const T* topk_weights, T* y, int64_t N, int64_t K,
                         int64_t D);
template <typename T>
void moe_combine_backward(const T* grad_y, const T* expert_y, const int32_t* pos, const T* topk_weights,
                          T* grad_expert_y, T* grad_topk_weights, int64_t N, int64_t K, int64_t D);
}  // namespace ref

}  // namespace moelab
