// bf16 matmul on the CPU: the GEMMs of the CPU's bf16 mixed precision (train.precision = bf16 on
// the CPU; Runtime in train/runtime.h). The same map and contract as core/ops/matmul.h (Y = X W^T,
// x [M, K], w [N, K], y [M, N]) with every GEMM operand rounded to bf16 (nearest, ties to even)
// and the sums in f32:
//   Fprop  y  = R(x) R(w)^T
//   Dgrad  dx = R(dy) R(w)
//   Wgrad  dw += R(dy)^T R(x)
// A product of two bf16 values (8 significant bits each) is exact in f32, so the f32 GEMM of the
// rounded operands is a bf16 GEMM with f32 accumulation, the arithmetic of the GPU's tensor cores
// and of AVX512-BF16's VDPBF16PS; the rounded operands are written into scratch (the step's arena
// when the Exec has one, else the heap) and multiplied by cpu_gemm.h's f32 GEMM. That is the
// numerics of bf16, not its speed: the CPU here has no bf16 dot-product instructions (see
// examples/BENCHMARKS.md). The rounding is the straight-through estimator's: the backward GEMMs
// use the rounded operands, never the derivative of the rounding.
// Shapes, contract: as core/ops/matmul.h (y, grad_x OVERWRITTEN, grad_w ACCUMULATED, an undefined
// grad_x skipped). Dtypes: every tensor f32 on the CPU (CUDA's bf16 mode stores bf16 activations
// and calls matmul itself).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void bf16_matmul_forward(const Exec& ex, const Tensor& x, const Tensor& w, const Tensor& y);
void bf16_matmul_backward(const Exec& ex, const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                          const Tensor& grad_w);

namespace ref {
// y[i] = x[i] rounded to the nearest bf16 (ties to even), as f32: bf16_bits_to_float(float_to_bf16_bits(x[i]))
// of core/dtype.h, NaN kept a NaN, infinities kept. y may be x.
void round_to_bf16(const float* x, float* y, int64_t n);
}  // namespace ref

}  // namespace moelab
