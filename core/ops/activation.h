// Activations for the router scores (MODEL.md, DeepSeekMoE: `scoring_func` sigmoid (V3) or
// softmax (V2)) and wherever else a plain sigmoid or softmax is needed.
//   sigmoid:  y = 1 / (1 + e^-x)                          grad_x = grad_y * y * (1 - y)
//   softmax over the last dim of each row:
//            y_i = e^(x_i - max) / sum_j e^(x_j - max)     grad_x = y * (grad_y - sum_j grad_y_j * y_j)
//   (subtracting the row max changes nothing mathematically and keeps every e^... <= 1)
// Shapes: sigmoid: x, y, grad_y, grad_x any shape (all equal). softmax: [..., C] (rows of C, e.g.
//         router logits [B*T, E]), all equal.
// Contract: forward OVERWRITES y; backward OVERWRITES grad_x and needs only the saved output y.
// Dtypes: CPU: every tensor f32, or every tensor f64 (gradient checks).
//         CUDA: every tensor f32 (the router), or every tensor bf16 (computed in f32).
#pragma once

#include <cmath>
#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void sigmoid_forward(const Exec& ex, const Tensor& x, const Tensor& y);
void sigmoid_backward(const Exec& ex, const Tensor& grad_y, const Tensor& y, const Tensor& grad_x);
void softmax_forward(const Exec& ex, const Tensor& x, const Tensor& y);
void softmax_backward(const Exec& ex, const Tensor& grad_y, const Tensor& y, const Tensor& grad_x);

namespace ref {

// The logistic function for any a. The textbook 1 / (1 + e^-a) overflows e^-a once a < -88 (float);
// the branch keeps exp's argument <= 0, so nothing overflows and tiny results keep their digits.
template <typename T>
inline T sigmoid(T a) {
  if (a >= 0) return T(1) / (T(1) + std::exp(-a));
  const T e = std::exp(a);
  return e / (T(1) + e);
}

template <typename T>
void sigmoid_forward(const T* x, T* y, int64_t n);
template <typename T>
void sigmoid_backward(const T* grad_y, const T* y, T* grad_x, int64_t n);
template <typename T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols);
template <typename T>
void softmax_backward(const T* grad_y, const T* y, T* grad_x, int64_t rows, int64_t cols);

}  // namespace ref

}  // namespace moelab
