// Multi-head latent attention (MODEL.md, "Multi-head latent attention"), per token x (D):
//   query:  Cq > 0: q = W_qb RMSNorm_q(W_qa x)   else q = W_q x          q: [N, H, Dn+Dr]
//           RoPE on the last Dr dims of each head
//   kv:     [ckv_raw ; kr] = W_kva x (Ckv + Dr);  ckv = RMSNorm_kv(ckv_raw);  kv = W_kvb ckv
//           per head [k_nope (Dn) ; v (Dv)];  kr gets RoPE and is ONE key shared by all heads
//   k_h = [k_nope_h ; rope(kr)],  attention with scale 1/sqrt(Dn+Dr),  y = W_o concat_h(o_h)
// A KV cache holds only ckv and rope(kr): Ckv + Dr numbers per token per layer.
// HF names: self_attn.q_a_proj, q_a_layernorm, q_b_proj (or q_proj), kv_a_proj_with_mqa,
// kv_a_layernorm, kv_b_proj, o_proj. Contract: core/nn/context.h.
#pragma once

#include <string>

#include "core/nn/config.h"
#include "core/nn/context.h"
#include "core/nn/cost.h"
#include "core/nn/linear.h"
#include "core/nn/norm.h"

namespace moelab {

class MLAttention {
 public:
  struct Saved {
    Tensor x;                        // [N, D]
    Tensor cq;                       // [N, Cq] normalised query latent (Cq > 0)
    RMSNorm::Saved q_norm, kv_norm;
    Tensor ckv;                      // [N, Ckv] normalised kv latent
    Tensor q, k, v;                  // [B, T, H, Dn+Dr] (after RoPE), [B, T, H, Dn+Dr], [B, T, H, Dv]
    Tensor out;                      // [B, T, H, Dv]
    Tensor lse;                      // [B, H, T]
  };

  MLAttention() = default;
  // prefix: "model.layers.{l}.self_attn"
  MLAttention(ParamBuffer& params, const std::string& prefix, const ModelConfig& cfg);

  void forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& saved) const;  // x, y: [N, D]
  void backward(const Context& ctx, const Saved& saved, const Tensor& grad_y, const Tensor& grad_x) const;

  // Generation (core/nn/decode.cpp). The cache holds only ckv and rope(kr), MODEL.md's Ckv + Dr
  // numbers per token; decode attends over them in the absorbed form (core/ops/mla_decode.h).
  struct KVCache {
    Tensor ckv;  // [B, S, Ckv] the normalised latent of each position
    Tensor kr;   // [B, S, Dr] its rope key, after RoPE
  };
  KVCache new_cache(int64_t batch, int64_t capacity, DType dtype, Device device) const;  // zeros
  // x, y: [B*n, D], the n = ctx.seq_len new tokens of each sequence at positions [pos, pos + n).
  // Reads positions [0, pos) from the cache and writes [pos, pos + n) into it.
  void decode(const Context& ctx, const Tensor& x, const Tensor& y, KVCache& cache, int64_t pos) const;
  // Arena bytes one decode() of shape.tokens() rows allocates (core/nn/cost.h's rules).
  int64_t decode_bytes(const CostShape& shape) const;

  // What it costs (core/nn/cost.h): the projections, the scores with Dqk = Dn + Dr and Dv, a cache of
  // Ckv + Dr numbers per token, and every tensor forward and backward allocate (the list in cost()).
  LayerCost cost(const CostShape& shape) const;
  AttentionDims dims() const { return {heads_, heads_, nope_ + rope_, v_dim_}; }
  std::string describe() const;          // "H=16 Cq=0 Ckv=512 Dn=128 Dr=64 Dv=128"
  std::string kv_cache_formula() const;  // "MLA latent Ckv + rope key Dr per layer: (512 + 64)"

 private:
  float scale() const;

  Linear q_proj_, q_a_proj_, q_b_proj_, kv_a_proj_, kv_b_proj_, o_proj_;
  RMSNorm q_a_norm_, kv_a_norm_;
  int64_t heads_ = 0, q_rank_ = 0, kv_rank_ = 0, nope_ = 0, rope_ = 0, v_dim_ = 0;
  double rope_theta_ = 10000.0;
};

}  // namespace moelab
