// Top-k over the last dim, as the MoE router selects K of E experts per token (MODEL.md,
// "DeepSeekMoE"): for each row n, indices[n, :] are the K positions of the largest x[n, :] and
// values[n, j] = x[n, indices[n, j]], sorted by value, largest first.
// Order (deterministic): larger value first; EQUAL values by the LOWER index first; NaN ranks
// above every number (as torch.topk does), NaNs among themselves by index. +0 and -0 are equal.
// Backward: values is a gather, so grad_x[n, e] = grad_values[n, j] where indices[n, j] = e, and 0
// for the E - K entries that were not selected.
// Shapes: x, grad_x: [N, E]   values, grad_values: [N, K]   indices: [N, K], 1 <= K <= E.
// Contract: forward writes values and indices. backward OVERWRITES grad_x (all of it).
// Dtypes: CPU: x, values, grad_values, grad_x f32 or f64 (all the same); indices i32.
//         CUDA: x, values, grad_values, grad_x f32; indices i32. The indices of backward are not
//         read on the host there: an out-of-range index turns its row of grad_x into NaN.
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void topk_forward(const Exec& ex, const Tensor& x, int64_t k, const Tensor& values, const Tensor& indices);
void topk_backward(const Exec& ex, const Tensor& grad_values, const Tensor& indices, const Tensor& grad_x);

namespace ref {
template <typename T>
void topk_forward(const T* x, T* values, int32_t* indices, int64_t rows, int64_t E, int64_t K);
// indices must lie in [0, E) (the public API checks).
template <typename T>
void topk_backward(const T* grad_values, const int32_t* indices, T* grad_x, int64_t rows, int64_t E, int64_t K);
}  // namespace ref

}  // namespace moelab
