// Causal softmax attention (MODEL.md, "Multi-head latent attention"), the naive reference that the
// flash kernel is checked against. Query and key heads have dim Dqk (MLA: Dn+Dr), values Dv; KV
// heads are grouped: query head h reads KV head h / (H / Hkv) (MHA: Hkv = H, GQA: H % Hkv == 0,
// MQA: Hkv = 1). For each batch b, head h and query position t:
//   s_j   = scale * q_t . k_j                   for j <= t (causal)
//   lse_t = log sum_{j<=t} exp(s_j)             (saved for backward)
//   p_j   = exp(s_j - lse_t),   out_t = sum_{j<=t} p_j v_j
// Backward, with D_t = grad_out_t . out_t:
//   dp_j = grad_out_t . v_j,   ds_j = p_j (dp_j - D_t)
//   grad_q_t = scale sum_j ds_j k_j,   grad_k_j = scale sum_{h in group, t>=j} ds_j q_t,
//   grad_v_j = sum_{h in group, t>=j} p_j grad_out_t
// Shapes: q: [B, T, H, Dqk]   k: [B, T, Hkv, Dqk]   v: [B, T, Hkv, Dv]
//         out: [B, T, H, Dv]  lse: [B, H, T]
// scale is the caller's (MLA: 1/sqrt(Dn+Dr)); it must be finite and > 0.
// Contract: forward writes out and lse. backward OVERWRITES grad_q, grad_k and grad_v (they are
// activation gradients: q, k, v come from projections). Every gradient element has one writer
// that sums in a fixed order, so the result does not depend on the thread count.
// Dtypes: CPU: every tensor f32, or every tensor f64.
//         CUDA: q, k, v, out, grad_out, grad_q, grad_k, grad_v all f32 or all bf16; lse f32.
//         Dqk, Dv <= 256 on CUDA (cuda/attention.h, kAttentionMaxHeadDim); math in f32.
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

// Implementations. CPU: Naive is the reference loops below (the specification); Gemm
// (attention_gemm.cpp, the default) computes the same per (batch, head) with matrix products.
// CUDA (cuda/attention.cu): Naive runs the reference kernels (one thread per row, plain loops);
// Gemm, the default, runs the fused flash kernels (online softmax over shared-memory key tiles, no
// T x T matrix; backward recomputes P from lse, deterministic, no atomics).
// Tests check that they agree (tests/ops/test_attention_impls.cpp, tests/gpu/test_attention_cuda.cpp).
enum class AttentionImpl { Naive, Gemm };

void attention_forward(const Exec& ex, const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                       const Tensor& out, const Tensor& lse, AttentionImpl impl = AttentionImpl::Gemm);
void attention_backward(const Exec& ex, const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, float scale, const Tensor& grad_q, const Tensor& grad_k,
                        const Tensor& grad_v, AttentionImpl impl = AttentionImpl::Gemm);

namespace ref {
struct AttentionShape {
  int64_t B, T, H, Hkv, Dqk, Dv;
};
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T scale, T* out, T* lse, const AttentionShape& s);
template <typename T>
void attention_backward(const T* grad_out, const T* q, const T* k, const T* v, const T* out, const T* lse, T scale,
                        T* grad_q, T* grad_k, T* grad_v, const AttentionShape& s);
}  // namespace ref

namespace gemm {  // same signatures and contract as ref::
template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T scale, T* out, T* lse, const ref::AttentionShape& s);
template <typename T>
void attention_backward(const T* grad_out, const T* q, const T* k, const T* v, const T* out, const T* lse, T scale,
                        T* grad_q, T* grad_k, T* grad_v, const ref::AttentionShape& s);
}  // namespace gemm

}  // namespace moelab
