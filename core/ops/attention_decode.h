// Causal attention over a KV cache, for generation (MODEL.md, "Multi-head latent attention"; the
// MHA/GQA baselines). The n new tokens of each sequence sit at positions pos .. pos+n-1; their keys
// and values are already in the cache beside those of positions 0 .. pos-1. Query row t (position
// pos + t) attends to the cached positions j <= pos + t, exactly as attention_forward
// (core/ops/attention.h) does for a whole sequence:
//   s_j = scale * q_t . k_j   (j <= pos + t),   p = softmax(s),   out_t = sum_j p_j v_j
// KV heads are grouped as there: query head h reads KV head h / (H / Hkv).
// Shapes: q: [B, n, H, Dqk]   k: [B, S, Hkv, Dqk]   v: [B, S, Hkv, Dv]   out: [B, n, H, Dv]
//         S is the cache's capacity, pos + n <= S; rows at positions >= pos + n are never read.
// Contract: OVERWRITES out. Inference only: no lse, no backward.
// Dtypes: CPU: every tensor f32, or every tensor f64. CUDA: every tensor f32, or every tensor bf16
//         (math in f32; cuda/attention_decode.cu).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void attention_decode_forward(const Exec& ex, const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                              int64_t pos, const Tensor& out);

namespace ref {
struct AttentionDecodeShape {
  int64_t B, n, S, H, Hkv, Dqk, Dv, pos;
};
template <typename T>
void attention_decode_forward(const T* q, const T* k, const T* v, T scale, T* out, const AttentionDecodeShape& s);
}  // namespace ref

}  // namespace moelab
