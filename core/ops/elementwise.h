// Elementwise ops of the residual stream and of gradient sums:
//   add:   out = a + b            (the residual add x + f(x); also grad = grad_1 + grad_2)
//   axpy:  y += alpha * x         (accumulating a scaled gradient into another)
// Shapes: all operands have the same number of elements (any shape). out may alias a or b.
// There is no backward op: d(a + b) passes the gradient through to both inputs unchanged.
// Dtypes: CPU: all f32 or all f64. CUDA: no kernel yet.
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace moelab {

void add(const Tensor& a, const Tensor& b, const Tensor& out);
void axpy(double alpha, const Tensor& x, const Tensor& y);

namespace ref {
template <typename T>
void add(const T* a, const T* b, T* out, int64_t n);
template <typename T>
void axpy(T alpha, const T* x, T* y, int64_t n);
}  // namespace ref

}  // namespace moelab
