// Launcher for MLA's absorbed attention over its latent cache (core/ops/mla_decode.h has the math
// and the shapes). q, ckv, kr, out are f32 or bf16 as `bf16` says; w_kvb (a parameter) is f32 or
// bf16 as `w_bf16` says; the math runs in f32.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct MlaDecodeParams {
  const void* q;      // [B, n, H, Dn + Dr] (q_rope turned)
  const void* w_kvb;  // [H * (Dn + Dv), Ckv]: per head Dn key rows W_uk_h, then Dv value rows W_uv_h
  const void* ckv;    // [B, S, Ckv]: the latent cache; positions >= pos + n are never read
  const void* kr;     // [B, S, Dr]: the rope-key cache
  void* out;          // [B, n, H, Dv], overwritten
  int64_t B, n, S, H, Dn, Dr, Dv, Ckv, pos;
  float scale;
  bool bf16;    // q, ckv, kr, out
  bool w_bf16;  // w_kvb
  Stream stream;
};

// Throws moelab::cuda::CudaError on a CUDA failure, std::invalid_argument when the absorbed query
// and the per-warp latent accumulators (5 Ckv + Dr floats) do not fit the device's shared memory.
void mla_decode_attention(const MlaDecodeParams& p);

}  // namespace moelab::cuda
