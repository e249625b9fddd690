// The attention baselines of the ablations (MODEL.md, "Ablation baselines"): multi-head (MHA,
// Hkv = H) and grouped-query attention (GQA, H % Hkv == 0), head_dim hd = D / H, RoPE on the last
// R dims of every query and key head (R from partial_rotary_factor), scale 1/sqrt(hd).
//   q = W_q x [N, H, hd], k = W_k x [N, Hkv, hd], v = W_v x [N, Hkv, hd]
//   y = W_o attention(rope(q), rope(k), v)
// HF names: self_attn.q_proj, k_proj, v_proj, o_proj. Contract: core/nn/context.h.
#pragma once

#include <string>

#include "core/nn/config.h"
#include "core/nn/context.h"
#include "core/nn/cost.h"
#include "core/nn/linear.h"

namespace moelab {

class GQAttention {
 public:
  struct Saved {
    Tensor x;        // [N, D]
    Tensor q, k, v;  // [B, T, H, hd], [B, T, Hkv, hd] x2; q and k after RoPE
    Tensor out;      // [B, T, H, hd] attention output before o_proj
    Tensor lse;      // [B, H, T]
  };

  GQAttention() = default;
  // prefix: "model.layers.{l}.self_attn"
  GQAttention(ParamBuffer& params, const std::string& prefix, const ModelConfig& cfg);

  void forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& saved) const;  // x, y: [N, D]
  void backward(const Context& ctx, const Saved& saved, const Tensor& grad_y, const Tensor& grad_x) const;

  // Generation (core/nn/decode.cpp): the cache holds every position's keys (after RoPE) and values.
  struct KVCache {
    Tensor k, v;  // [B, S, Hkv, hd] each
  };
  KVCache new_cache(int64_t batch, int64_t capacity, DType dtype, Device device) const;  // zeros
  // x, y: [B*n, D], the n = ctx.seq_len new tokens of each sequence at positions [pos, pos + n).
  // Reads positions [0, pos) from the cache and writes [pos, pos + n) into it.
  void decode(const Context& ctx, const Tensor& x, const Tensor& y, KVCache& cache, int64_t pos) const;
  // Arena bytes one decode() of shape.tokens() rows allocates (core/nn/cost.h's rules).
  int64_t decode_bytes(const CostShape& shape) const;

  // What it costs (core/nn/cost.h): the projections, the scores with Dqk = Dv = hd, a cache of
  // 2 x Hkv x hd numbers per token, and every tensor forward and backward allocate.
  LayerCost cost(const CostShape& shape) const;
  AttentionDims dims() const { return {heads_, kv_heads_, head_dim_, head_dim_}; }
  std::string describe() const;          // "H=4 Hkv=2 head_dim=32 rope_dim=32"
  std::string kv_cache_formula() const;  // "gqa keys and values per layer: 2 x Hkv 2 x head_dim 32"

 private:
  const char* kind_ = "mha";  // attention_kind_name(cfg.attention): mha or gqa
  Linear q_proj_, k_proj_, v_proj_, o_proj_;
  int64_t heads_ = 0, kv_heads_ = 0, head_dim_ = 0, rope_dim_ = 0;
  double rope_theta_ = 10000.0;
};

}  // namespace moelab
