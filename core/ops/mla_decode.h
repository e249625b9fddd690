// MLA attention over its latent KV cache, in the absorbed form (MODEL.md, "Multi-head latent
// attention", "Inference trick (absorb)"; DeepSeek-V3's inference code, attn_impl "absorb").
//
// The cache holds, per position j, only the normalised latent ckv_j (Ckv) and the rope key kr_j (Dr,
// already turned). kv_b_proj.weight W_kvb [H*(Dn+Dv), Ckv] holds, for head h, Dn key rows W_uk_h
// [Dn, Ckv] and then Dv value rows W_uv_h [Dv, Ckv], so training's per-head key and value are
//   k_h,j = [W_uk_h ckv_j ; kr_j],   v_h,j = W_uv_h ckv_j.
// Both matrices fold away, W_uk_h into the query and W_uv_h into the output:
//   q_h . k_h,j      = (W_uk_h^T q_nope_h) . ckv_j + q_rope_h . kr_j
//   sum_j p_j v_h,j  = W_uv_h (sum_j p_j ckv_j)
// so every head attends directly over the cached latents: multi-query attention with the
// (Ckv + Dr)-dim key [ckv_j ; kr_j] and the Ckv-dim value ckv_j, shared by all heads. Per query
// row t (position pos + t) and head h:
//   qa_h = W_uk_h^T q_nope_h                                   (Ckv)
//   s_j  = scale * (qa_h . ckv_j + q_rope_h . kr_j)            j <= pos + t (causal)
//   p    = softmax(s),   out_h = W_uv_h (sum_j p_j ckv_j)      (Dv)
// Why: a step costs O(H * (Dn + Dv) * Ckv) for the two folds plus O(H * (pos + t) * (2 Ckv + Dr)) for
// the attention, and nothing per cached position is ever expanded to H heads: that expansion (the
// "recompute" form, kv = W_kvb ckv for every cached j at every step) costs H * (Dn + Dv) * Ckv per
// cached position. The result equals expanding kv and running attention_forward up to rounding (the
// same products summed in another order; tests/ops/test_attention_decode.cpp: 1e-13 in f64).
// Shapes: q: [B, n, H, Dn+Dr] (q_rope turned)   w_kvb: [H*(Dn+Dv), Ckv]
//         ckv: [B, S, Ckv]   kr: [B, S, Dr]   out: [B, n, H, Dv]
//         S is the cache's capacity, pos + n <= S; positions >= pos + n are never read.
// Contract: OVERWRITES out. Inference only: no backward.
// Dtypes: CPU: every tensor f32, or every tensor f64. CUDA: q, ckv, kr, out all f32 or all bf16;
//         w_kvb (a parameter) f32 or bf16, either way (math in f32; cuda/mla_decode.cu).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void mla_decode_attention(const Exec& ex, const Tensor& q, const Tensor& w_kvb, const Tensor& ckv, const Tensor& kr,
                          float scale, int64_t pos, const Tensor& out);

namespace ref {
struct MlaDecodeShape {
  int64_t B, n, S, H, Dn, Dr, Dv, Ckv, pos;
};
template <typename T>
void mla_decode_attention(const T* q, const T* w_kvb, const T* ckv, const T* kr, T scale, T* out,
                          const MlaDecodeShape& s);
}  // namespace ref

}  // namespace moelab
