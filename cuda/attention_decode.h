// Launcher for causal attention over a KV cache (core/ops/attention_decode.h has the math and the
// shapes). q, k, v, out are f32 or bf16 as `bf16` says; the math runs in f32.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct AttentionDecodeParams {
  const void* q;  // [B, n, H, Dqk]: the n new tokens, at positions pos .. pos+n-1
  const void* k;  // [B, S, Hkv, Dqk]: the cache; rows at positions >= pos + n are never read
  const void* v;  // [B, S, Hkv, Dv]
  void* out;      // [B, n, H, Dv], overwritten
  int64_t B, n, S, H, Hkv, Dqk, Dv, pos;
  float scale;
  bool bf16;
  Stream stream;
};

// Throws moelab::cuda::CudaError on a CUDA failure, std::invalid_argument when q's row and the
// per-warp accumulators (Dqk + 4 Dv floats) do not fit the device's shared memory.
void attention_decode_forward(const AttentionDecodeParams& p);

}  // namespace moelab::cuda
