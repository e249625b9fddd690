// SwiGLU, the gated activation inside every dense MLP and expert (MODEL.md: down(silu(gate(x)) * up(x))):
//   out = silu(gate) * up,   silu(a) = a * sigmoid(a)
// Backward, with s = sigmoid(gate):
//   grad_gate = grad_out * up * s * (1 + gate * (1 - s))     (d silu(a)/da = s + a * s * (1 - s))
//   grad_up   = grad_out * silu(gate)
// Shapes: gate, up, out, grad_out, grad_gate, grad_up: [..., F] (the projections' outputs), all equal.
// Contract: forward OVERWRITES out; backward OVERWRITES grad_gate and grad_up (no parameters).
// Dtypes: CPU: every tensor f32, or every tensor f64 (gradient checks).
//         CUDA: every tensor f32, or every tensor bf16 (computed in f32).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void swiglu_forward(const Exec& ex, const Tensor& gate, const Tensor& up, const Tensor& out);
void swiglu_backward(const Exec& ex, const Tensor& grad_out, const Tensor& gate, const Tensor& up,
                     const Tensor& grad_gate, const Tensor& grad_up);

namespace ref {
template <typename T>
void swiglu_forward(const T* gate, const T* up, T* out, int64_t n);
template <typename T>
void swiglu_backward(const T* grad_out, const T* gate, const T* up, T* grad_gate, T* grad_up, int64_t n);
}  // namespace ref

}  // namespace moelab
