// Matmul: the bias-free linear map of every projection in the model (MODEL.md): Y = X W^T,
//   y[m, n] = sum_k x[m, k] * w[n, k]
// Letters: the GEMM's own M (rows), K (reduction dim: not the top-k K), N (output features).
// Shapes: x: [..., K] (M = numel / K rows)   w: [N, K] (nn.Linear's [out, in] layout, as HF stores it)
//         y: [..., N] (x's leading dims)
// Backward: grad_x = grad_y W        ([M, N] x [N, K])
//           grad_w += grad_y^T X     ([N, M] x [M, K])
// Contract: forward OVERWRITES y. backward OVERWRITES grad_x (an undefined grad_x skips that GEMM,
// for inputs that need no gradient) and ACCUMULATES (+=) into grad_w.
// Dtypes: CPU: every tensor f32 (oneDNN), or every tensor f64 (Eigen; gradient checks), accumulated in that
//         type (never lower). CUDA (cuBLASLt through ex.gpu, which must be set): x, w, y,
//         grad_y, grad_x all f32 or all bf16, grad_w f32; accumulation in f32 (full fp32 for f32).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void matmul_forward(const Exec& ex, const Tensor& x, const Tensor& w, const Tensor& y);
void matmul_backward(const Exec& ex, const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                     const Tensor& grad_w);

namespace ref {
template <typename T>
void matmul_forward(const T* x, const T* w, T* y, int64_t m, int64_t k, int64_t n);
// grad_x may be nullptr (skipped).
template <typename T>
void matmul_backward(const T* grad_y, const T* x, const T* w, T* grad_x, T* grad_w, int64_t m, int64_t k, int64_t n);
}  // namespace ref

}  // namespace moelab
