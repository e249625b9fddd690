// Launchers for the FP8 quantisation (core/ops/fp8_quant.h has the math and the contract). x and y
// are f32 or bf16 as `bf16` says; q is e4m3 bytes, scales f32. Every value is computed as the CPU
// reference computes it (f32 divisions rounded to nearest, the same special cases, round-to-nearest-
// even into e4m3), so q and scales equal the reference's bit for bit.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

constexpr int64_t kFp8BlockSize = 128;  // channels per scale (and rows of a Block128 tile)

// The tiles that share one scale, over the quantised matrix (x, or x^T when transposed):
//   Row128    1 x 128: one row, 128 consecutive channels (activations and their gradients)
//   Block128  128 x 128 (weights)
enum class Fp8Tile : uint8_t { Row128, Block128 };

struct Fp8QuantizeParams {
  const void* x = nullptr;  // [R, C]
  // q: [R, C], or [C, R] = x^T when `transpose`, overwritten.
  uint8_t* q = nullptr;
  // The scales of q's tiles, overwritten. With (r, c) = q's shape: Row128 [r, ceil(c / 128)],
  // Block128 [ceil(r / 128), ceil(c / 128)].
  float* scales = nullptr;
  int64_t R = 0, C = 0;  // x's shape
  Fp8Tile tile = Fp8Tile::Row128;
  bool transpose = false;
  bool pow2_scales = false;  // scale = the smallest power of two >= amax / 448 (core/ops/fp8_quant.h)
  bool bf16 = false;
  Stream stream = nullptr;
};

struct Fp8DequantizeParams {
  const uint8_t* q = nullptr;     // [R, C] e4m3
  const float* scales = nullptr;  // Row128 [R, ceil(C / 128)], Block128 [ceil(R / 128), ceil(C / 128)]
  void* y = nullptr;              // [R, C], overwritten
  int64_t R = 0, C = 0;
  Fp8Tile tile = Fp8Tile::Row128;
  bool bf16 = false;
  Stream stream = nullptr;
};

void fp8_quantize(const Fp8QuantizeParams& p);
void fp8_dequantize(const Fp8DequantizeParams& p);

}  // namespace moelab::cuda
