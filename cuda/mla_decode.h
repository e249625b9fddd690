// Launcher for MLA's absorbed attention over its latent cache (core/ops/mla_decode.h has the math
// and the shapes). q, ckv, kr, out are f32 or bf16 as `bf16` says; w_kvb (a parameter) is f32 or
// bf16 as `w_bf16` says; the math runs in f32.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct MlaDecodeParams {
  const void* q = nullptr;      // [B, n, H, Dn + Dr] (q_rope turned)
  const void* w_kvb = nullptr;  // [H * (Dn + Dv), Ckv]: per head Dn key rows W_uk_h, then Dv value rows W_uv_h
  const void* ckv = nullptr;    // [B, S, Ckv]: the latent cache; positions >= pos + n are never read
  const void* kr = nullptr;     // [B, S, Dr]: the rope-key cache
  void* out = nullptr;          // [B, n, H, Dv], overwritten
  int64_t B = 0, n = 0, S = 0, H = 0, Dn = 0, Dr = 0, Dv = 0, Ckv = 0, pos = 0;
  float scale = 0.0f;
  bool bf16 = false;            // q, ckv, kr, out
  bool w_bf16 = false;          // w_kvb
  Stream stream = nullptr;
};

// Throws moelab::cuda::CudaError on a CUDA failure, std::invalid_argument when the absorbed query
// and the per-warp latent accumulators (5 Ckv + Dr floats) do not fit the device's shared memory.
void mla_decode_attention(const MlaDecodeParams& p);

}  // namespace moelab::cuda
