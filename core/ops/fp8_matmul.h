// FP8 matmul: the Linear GEMMs of DeepSeek-V3's FP8 training (MODEL.md, "FP8 recipe (Hopper)"). The
// same map and contract as core/ops/matmul.h (Y = X W^T, x [M, K], w [N, K], y [M, N]), with each
// GEMM's operands quantised to e4m3 with fine-grained scales (core/ops/fp8_quant.h) along its
// reduction dim, and f32 accumulation with the scales applied per 128-wide chunk of that dim:
//   Fprop  y  = Q(x) Q(w)^T       Q(x): Row128 tiles of x (per token, 128 channels of K)
//                                 Q(w): Block128 blocks of w
//   Dgrad  dx = Q(dy) Q(w)        Q(dy): Row128 tiles of dy (per token, 128 channels of N);
//                                 the same Q(w) (a 128 x 128 block is also its transpose's)
//   Wgrad  dw += Q(dy^T) Q(x^T)^T  both Row128 tiles of the transposes: 128 tokens per scale
//                                 (x stays f32/bf16 in Saved and is quantised again here)
// Each GEMM is, with c the 128-wide chunks of its reduction dim and s the tiles' scales,
//   out[i, j] = sum_c (sum_{r in c} qa[i, r] qb[j, r]) * sa(i, c) * sb(j, c)
// where every product of two e4m3 values is exact in f32 and the chunk sums are f32 (what Hopper's
// tensor cores do at full f32 accumulation, and what DeepSeek's promotion every 128 elements buys
// back on theirs). In real arithmetic this equals the plain GEMM of the dequantised operands
// (the scales are constant within a chunk), so
//   CPU: the exact emulation: quantise (bit for bit the CUDA kernels' q and scales), dequantise to
//        f32, one f32 GEMM (cpu_gemm.h); it differs from the chunked form above only in the rounding of
//        f32 sums (ref::fp8_gemm, in f64, is that form for the tests).
//   CUDA: cuBLASLt's FP8 block scaling (Blas::gemm_fp8: VEC128 scales for the activations,
//        BLK128x128 for the weights) or, where it has no algorithm, our reference kernel
//        (cuda/fp8_gemm.h); y and dx are bf16 or f32 as x is, dw accumulates into f32.
// The gradients treat quantisation as the identity (the straight-through estimator): the backward
// GEMMs use the quantised operands, never the derivative of the rounding.
// Shapes, contract: as core/ops/matmul.h (y, grad_x OVERWRITTEN, grad_w ACCUMULATED, an undefined
// grad_x skipped). Dtypes: CPU f32; CUDA x, w, y, grad_y, grad_x f32 or bf16 (all one), grad_w f32.
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/ops/fp8_quant.h"
#include "core/tensor.h"

namespace moelab {

// Where FP8 applies and how it scales: `enabled` switches the Linear GEMMs (core/nn/linear.h) to
// the functions below.
struct Fp8Recipe {
  bool enabled = false;
  bool pow2_scales = false;  // power-of-two scales (core/ops/fp8_quant.h)
};

void fp8_matmul_forward(const Exec& ex, const Tensor& x, const Tensor& w, const Tensor& y, const Fp8Recipe& recipe);
void fp8_matmul_backward(const Exec& ex, const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                         const Tensor& grad_w, const Fp8Recipe& recipe);

namespace ref {
// The chunked FP8 GEMM of the header in f64 (exact products, f64 sums):
//   c[i, j] (+)= sum_chunks (sum_r qa[i, r] qb[j, r]) * sa(i, chunk) * sb(j, chunk)
// qa [m, k] and qb [n, k] e4m3 with the scales of their tiles (fp8_scales_shape).
void fp8_gemm(const fp8_e4m3_t* qa, const float* sa, Fp8Tile tile_a, const fp8_e4m3_t* qb, const float* sb,
              Fp8Tile tile_b, double* c, int64_t m, int64_t n, int64_t k, bool accumulate);
}  // namespace ref

}  // namespace moelab
