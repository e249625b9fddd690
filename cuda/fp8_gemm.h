// FP8 GEMM with fine-grained scales (MODEL.md, "FP8 recipe"; core/ops/fp8_matmul.h has the math):
//   C[m, n] = (accumulate ? C[m, n] : 0) + sum over K chunks c of 128:
//               (sum_{k in c} a[m, k] * b[n, k]) * scale_a(m, c) * scale_b(n, c)
// Both operands are e4m3 and K-contiguous (row-major [m, k] and [n, k]: the "TN" form, the only
// one Hopper's FP8 tensor cores take), each with the scales of its fp8_quantize tiles:
//   Row128    a_scales [m, ceil(k / 128)]                 scale_a(m, c) = a_scales[m, c]
//   Block128  a_scales [ceil(m / 128), ceil(k / 128)]      scale_a(m, c) = a_scales[m / 128, c]
// (likewise b with n). The partial sum of a chunk is f32, then promoted into the f32 accumulator
// with both scales: DeepSeek-V3's increased accumulation precision. C is f32 or bf16 (`c_bf16`:
// the f32 result rounded once).
#pragma once

#include <cstdint>

#include "cuda/fp8_quant.h"
#include "cuda/stream.h"

namespace moelab::cuda {

struct Fp8GemmParams {
  const uint8_t* a = nullptr;  // [m, k] e4m3
  const float* a_scales = nullptr;
  Fp8Tile a_tile = Fp8Tile::Row128;
  const uint8_t* b = nullptr;  // [n, k] e4m3
  const float* b_scales = nullptr;
  Fp8Tile b_tile = Fp8Tile::Row128;
  void* c = nullptr;  // [m, n]
  bool c_bf16 = false;
  bool accumulate = false;  // C += (weight gradients); otherwise C is overwritten
  int64_t m = 0, n = 0, k = 0;
  Stream stream = nullptr;
};

// Our own kernel, the specification on the device: one thread per C element, chunk by chunk. Slow;
// for tests and where cuBLASLt has no algorithm (Blas::gemm_fp8 returns false).
void fp8_gemm_reference(const Fp8GemmParams& p);

// For Blas::gemm_fp8 (cuda/blas.cpp): writes the scales of one operand with `rows` rows and
// L = ceil(k / 128) chunks, from moelab's layout above into dst in cuBLASLt's layout for the
// operand's scale mode:
//   Row128    -> VEC128_32F      [L][rows] (rows contiguous; rows is a multiple of 4)
//   Block128  -> BLK128x128_32F  [ceil(rows / 128)][L4], L4 = L rounded up to a multiple of 4
// Returns the number of floats written at dst.
int64_t fp8_scales_to_cublaslt(const float* src, float* dst, Fp8Tile tile, int64_t rows, int64_t L, Stream stream);

}  // namespace moelab::cuda
