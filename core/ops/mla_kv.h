// MLA's per-head keys and values from the latent projection and the shared rope key
// (MODEL.md, "Multi-head latent attention"):
//   kv = W_kvb ckv, per head h: [k_nope_h ; v_h] (Dn + Dv)
//   k_h = [k_nope_h ; kr]   (kr: the ONE rope key of the token, shared by all heads)
//   v_h = v_h
// Backward: grad_kv_h = [grad_k_h[:Dn] ; grad_v_h],  grad_kr = sum_h grad_k_h[Dn:]
// Shapes: kv: [N, H, Dn+Dv]   kr: [N, Dr]   k: [N, H, Dn+Dr]   v: [N, H, Dv]  (N = B*T; any leading
//         dims that fold to N are accepted)
// Contract: forward OVERWRITES k and v; backward OVERWRITES grad_kv and grad_kr.
// Dtypes: CPU: all f32 or all f64. CUDA: all f32 or all bf16 (grad_kr summed in f32).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void mla_kv_forward(const Exec& ex, const Tensor& kv, const Tensor& kr, int64_t heads, int64_t nope_dim,
                    const Tensor& k, const Tensor& v);
void mla_kv_backward(const Exec& ex, const Tensor& grad_k, const Tensor& grad_v, int64_t heads, int64_t nope_dim,
                     const Tensor& grad_kv, const Tensor& grad_kr);

namespace ref {
struct MlaKvShape {
  int64_t N, H, Dn, Dr, Dv;
};
template <typename T>
void mla_kv_forward(const T* kv, const T* kr, T* k, T* v, const MlaKvShape& s);
template <typename T>
void mla_kv_backward(const T* grad_k, const T* grad_v, T* grad_kv, T* grad_kr, const MlaKvShape& s);
}  // namespace ref

}  // namespace moelab
