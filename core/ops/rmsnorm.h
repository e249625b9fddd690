// RMSNorm (MODEL.md, "Block structure"):
//   rstd = 1 / sqrt(mean_d(x^2) + eps),  y = x * rstd * weight
// Shapes: x, y: [..., D] (N rows)   weight: [D]   rstd: [N] (saved for backward)
// Contract: forward writes y and rstd. backward OVERWRITES grad_x and ACCUMULATES (+=) into
// grad_weight.
// Dtypes: CPU: every tensor f32, or every tensor f64 (gradient checks).
//         CUDA: x, y, grad_y, grad_x all f32 or all bf16; weight, rstd, grad_weight f32.
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void rmsnorm_forward(const Exec& ex, const Tensor& x, const Tensor& weight, float eps, const Tensor& y,
                     const Tensor& rstd);
void rmsnorm_backward(const Exec& ex, const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                      const Tensor& grad_x, const Tensor& grad_weight);

namespace ref {
template <typename T>
void rmsnorm_forward(const T* x, const T* weight, T eps, T* y, T* rstd, int64_t rows, int64_t dim);
template <typename T>
void rmsnorm_backward(const T* grad_y, const T* x, const T* weight, const T* rstd, T* grad_x, T* grad_weight,
                      int64_t rows, int64_t dim);
}  // namespace ref

}  // namespace moelab
