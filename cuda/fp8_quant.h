// Launchers for the FP8 1x128-tile quantisation (core/ops/fp8_quant.h has the math and the
// contract). x and y are f32 or bf16 as `bf16` says; q is e4m3 bytes, scales f32. Every value is
// computed as the CPU reference computes it (f32 divisions rounded to nearest, the same special
// cases, round-to-nearest-even into e4m3), so q and scales equal the reference's bit for bit.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

constexpr int64_t kFp8BlockSize = 128;  // channels per scale: one warp quantises one block

struct Fp8QuantizeParams {
  const void* x = nullptr;  // [N, D]
  uint8_t* q = nullptr;     // [N, D] e4m3, overwritten
  float* scales = nullptr;  // [N, ceil(D / 128)], overwritten
  int64_t N = 0, D = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct Fp8DequantizeParams {
  const uint8_t* q = nullptr;     // [N, D] e4m3
  const float* scales = nullptr;  // [N, ceil(D / 128)]
  void* y = nullptr;              // [N, D], overwritten
  int64_t N = 0, D = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

void fp8_quantize(const Fp8QuantizeParams& p);
void fp8_dequantize(const Fp8DequantizeParams& p);

}  // namespace moelab::cuda
