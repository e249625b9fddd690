// Launcher for causal attention over a KV cache (core/ops/attention_decode.h has the math and the
// shapes). q, k, v, out are f32 or bf16 as `bf16` says; the math runs in f32.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct AttentionDecodeParams {
  const void* q = nullptr;  // [B, n, H, Dqk]: the n new tokens, at positions pos .. pos+n-1
  const void* k = nullptr;  // [B, S, Hkv, Dqk]: the cache; rows at positions >= pos + n are never read
  const void* v = nullptr;  // [B, S, Hkv, Dv]
  void* out = nullptr;      // [B, n, H, Dv], overwritten
  int64_t B = 0, n = 0, S = 0, H = 0, Hkv = 0, Dqk = 0, Dv = 0, pos = 0;
  float scale = 0.0f;
  bool bf16 = false;
  Stream stream = nullptr;
};

// Throws moelab::cuda::CudaError on a CUDA failure, std::invalid_argument when q's row and the
// per-warp accumulators (Dqk + 4 Dv floats) do not fit the device's shared memory.
void attention_decode_forward(const AttentionDecodeParams& p);

}  // namespace moelab::cuda
