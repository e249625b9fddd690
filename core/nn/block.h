// One pre-norm decoder block (MODEL.md, "Block structure"):
//   h = x + Attn(RMSNorm_in(x));   y = h + FFN(RMSNorm_post(h))
// Attn is MLA, MHA or GQA (cfg.attention); FFN is the dense SwiGLU or DeepSeekMoE. This class is
// the one place where those two ablation switches are handled.
// HF names under the prefix "model.layers.{l}": input_layernorm, self_attn.*,
// post_attention_layernorm, mlp.*. Contract: core/nn/context.h.
#pragma once

#include <string>

#include "core/nn/config.h"
#include "core/nn/context.h"
#include "core/nn/cost.h"
#include "core/nn/gqa.h"
#include "core/nn/mla.h"
#include "core/nn/mlp.h"
#include "core/nn/moe.h"
#include "core/nn/norm.h"

namespace moelab {

class Block {
 public:
  struct Saved {
    RMSNorm::Saved attn_norm, ffn_norm;
    MLAttention::Saved mla;
    GQAttention::Saved gqa;
    SwiGLUMLP::Saved mlp;
    MoE::Saved moe;  // MoE blocks only (its stats: MoE::Saved::stats)
  };

  Block() = default;
  Block(ParamBuffer& params, ParamBuffer& buffers, const std::string& prefix, const ModelConfig& cfg, bool moe);

  void forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& saved) const;  // x, y: [N, D]
  // balance_grad_scale: d total / d (this block's balance loss); see MoE::backward.
  void backward(const Context& ctx, const Saved& saved, const Tensor& grad_y, double balance_grad_scale,
                const Tensor& grad_x) const;

  // Generation (core/nn/decode.cpp): the attention's cache (the one of cfg.attention is defined).
  struct KVCache {
    MLAttention::KVCache mla;
    GQAttention::KVCache gqa;
    int64_t elements_per_token() const;  // cached numbers per position of one sequence
  };
  KVCache new_cache(int64_t batch, int64_t capacity, DType dtype, Device device) const;
  // x, y: [B*n, D] at positions [pos, pos + n); the FFN is per token and runs as in forward (MoE: see
  // MoE::decode).
  void decode(const Context& ctx, const Tensor& x, const Tensor& y, KVCache& cache, int64_t pos) const;
  // Arena bytes one decode() of shape.tokens() rows allocates (core/nn/cost.h's rules).
  int64_t decode_bytes(const CostShape& shape) const;

  // What it costs (core/nn/cost.h): its norms, attention and FFN, and the five [N, D] temporaries of
  // forward (normed, branch, h, normed2, branch2) and three of backward.
  LayerCost cost(const CostShape& shape) const;
  // The attention in use: its cost alone, its score shapes and what `moelab info` and `moelab sample`
  // print about it (MLAttention / GQAttention::describe and kv_cache_formula).
  LayerCost attention_cost(const CostShape& shape) const;
  AttentionDims attention_dims() const;
  std::string describe_attention() const;
  std::string kv_cache_formula() const;

  bool is_moe() const { return is_moe_; }
  MoE& moe() { return moe_; }
  const MoE& moe() const { return moe_; }

 private:
  // f(the attention layer in use): every question about the attention goes through here, but
  // forward, backward, new_cache and decode, whose Saved and caches are of the kind's own type.
  template <typename F>
  auto with_attention(F f) const {
    return attention_ == AttentionKind::MLA ? f(mla_) : f(gqa_);
  }

  AttentionKind attention_ = AttentionKind::MLA;
  bool is_moe_ = false;
  int64_t dim_ = 0;  // D
  RMSNorm attn_norm_, ffn_norm_;
  MLAttention mla_;
  GQAttention gqa_;
  SwiGLUMLP mlp_;
  MoE moe_;
};

}  // namespace moelab
