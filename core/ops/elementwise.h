// Elementwise ops of the residual stream and of gradient sums:
//   add:   out = a + b            (the residual add x + f(x); also grad = grad_1 + grad_2)
//   axpy:  y += alpha * x         (accumulating a scaled gradient into another)
//   cast:  y = x in y's dtype     (e.g. f32 master weights -> bf16 copies, bf16 -> f32 gradients)
// Shapes: add/axpy: all operands have the same number of elements (any shape); out may alias a or
// b, y may alias x. cast: x and y have the same shape; y is OVERWRITTEN; they must not overlap,
// except that the very same tensor of one dtype is allowed (nothing to do).
// There is no backward op: d(a + b) passes the gradient through to both inputs unchanged (and the
// gradient of a cast is the cast of the gradient back).
// cast rounds to nearest even (core/dtype.h); bf16 -> f32/f64 and f32 -> f64 are exact; f64 ->
// bf16 goes through f32 as Tensor::to does (two roundings, each to nearest even). A NaN stays a
// NaN, but its bf16 bits may differ between the CPU (sign and payload kept) and CUDA (canonical).
// Dtypes: add/axpy: CPU: all f32 or all f64. CUDA: all f32 or all bf16 (computed in f32).
//         cast: CPU: any combination of f32, f64, bf16, or the same dtype on both sides (any
//         dtype: a copy). CUDA: f32 <-> bf16, or the same dtype on both sides (a copy).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void add(const Exec& ex, const Tensor& a, const Tensor& b, const Tensor& out);
void axpy(const Exec& ex, double alpha, const Tensor& x, const Tensor& y);
void cast(const Exec& ex, const Tensor& x, const Tensor& y);

namespace ref {
template <typename T>
void add(const T* a, const T* b, T* out, int64_t n);
template <typename T>
void axpy(T alpha, const T* x, T* y, int64_t n);
}  // namespace ref

}  // namespace moelab
