// What a layer costs, reported by the layer itself from its config (DESIGN.md, "Each layer reports its
// own cost"): parameters (total, and active per token), training FLOPs per token by phase
// (core/profile.h), the KV cache of generation (MODEL.md, "Multi-head latent attention": what MLA
// saves), and the bytes one forward + backward takes from the step's activation arena. Every layer has
// `LayerCost cost(const CostShape&) const`; a composite layer adds its parts' costs with += and then
// its own allocations. `moelab info`, the bench's MFU, the arena's size and the sampler read them.
//
// Conventions (MODEL.md, "Counting for MFU"; train/model_info.h prints them):
// - FLOPs count matmuls (2 per multiply-add) and attention scores only: norms, activations, RoPE, the
//   embedding lookup and the loss are free. Backward = 2 x forward (input and weight gradients).
// - Attention scores are causal and count HALF of the T^2 work: per token and head, QK^T and PV over
//   the full square take 2 x T x Dqk and 2 x T x Dv forward; the half is T x (Dqk + Dv).
// - Routed experts: K per token (dropless), whatever a capacity factor drops.
// - Activation bytes: every ctx.alloc of forward and backward, each rounded up to Arena::kAlignment,
//   in the dtype the layer allocates it in (activations CostShape::act; statistics f32, f64 in gradient
//   checks; indices i32). The arena is a bump allocator reset once per micro-batch, so its peak is that
//   sum. Outputs and input gradients are passed in by the caller, so a layer counts only what it
//   allocates itself. Data-dependent sizes take their upper bound (dropless routing; every expert that
//   can get rows loses up to one alignment unit per allocation), so the figure bounds the measured peak
//   from above (tests/nn/test_cost.cpp holds it within 10% of Arena::peak() for every preset).
#pragma once

#include <array>
#include <cstdint>

#include "core/dtype.h"
#include "core/profile.h"

namespace moelab {

// What a cost depends on beyond the layer's config: the step's batch and its activation dtype.
struct CostShape {
  int64_t batch = 1;       // B
  int64_t seq_len = 1;     // T
  DType act = DType::F32;  // activations: f32 (CPU), bf16 (CUDA mixed precision), f64 (gradient checks)

  int64_t tokens() const { return batch * seq_len; }  // N
  // Full-precision statistics (rstd, log-sum-exps, losses, the router), as Context::stat_dtype().
  DType stat() const { return act == DType::F64 ? DType::F64 : DType::F32; }
};

// The shapes causal attention sees (core/ops/attention.h): q [B, T, H, Dqk], k [B, T, Hkv, Dqk],
// v [B, T, Hkv, Dv]; the scale is 1/sqrt(Dqk).
struct AttentionDims {
  int64_t heads = 0;     // H
  int64_t kv_heads = 0;  // Hkv
  int64_t qk_dim = 0;    // Dqk
  int64_t v_dim = 0;     // Dv
};

struct LayerCost {
  int64_t params = 0;         // trainable parameters the layer declares
  int64_t active_params = 0;  // those a token uses (of the routed experts, K of E)
  int64_t matmul_params = 0;  // active parameters that multiply a token, per use (a shared weight
                              // used twice, like the LM head of every loss head, counts twice)
  std::array<double, kNumPhases> forward_flops{};   // per token, by phase
  std::array<double, kNumPhases> backward_flops{};  // per token, by phase
  int64_t kv_cache_elements = 0;      // numbers generation caches per token (all layers of the sum)
  int64_t kv_cache_mha_elements = 0;  // what MHA with the same heads and head dims would cache
  int64_t saved_per_token = 0;        // numbers per token that Saved keeps for backward, each block
                                      // counting its input (`moelab info`'s breakdown)
  int64_t activation_bytes = 0;       // arena bytes of one forward + backward at the CostShape
  // FP8 training's GEMMs (every Linear's three, core/ops/fp8_matmul.h; not the router's or the LM
  // head's): per token, the features in and out of each Linear the token passes (a routed expert
  // once per top-K use) and their training FLOPs; and the Linear weights (every expert's).
  int64_t fp8_in = 0, fp8_out = 0, fp8_weights = 0;
  double fp8_flops = 0;

  LayerCost& operator+=(const LayerCost& o);

  // One arena allocation of `numel` elements of `dtype`.
  void alloc(int64_t numel, DType dtype);
  // At most `pieces` allocations of `dtype` that hold `numel` elements together, split at run time
  // (an MoE's per-expert rows): each rounds up by less than one alignment unit.
  void alloc_split(int64_t numel, DType dtype, int64_t pieces);
  // A matmul y = x W^T with W [out, in] per token, in phase p: 2 x in x out forward, twice that backward.
  void gemm(Phase p, int64_t in, int64_t out);
  // Moves the FLOPs of phase `from` into `to` (an expert's or the router's GEMMs are that phase's time).
  void move_flops(Phase from, Phase to);
  // A Linear that stays in the activation precision under FP8 training (the router).
  void not_fp8() { fp8_in = fp8_out = fp8_weights = 0; fp8_flops = 0; }

  double flops(Phase p) const;  // forward + backward per token in phase p
  double training_flops() const;  // forward + backward per token, every phase
  int64_t kv_cache_bytes(DType dtype) const { return kv_cache_elements * static_cast<int64_t>(dtype_size(dtype)); }
};

// Arena bytes of one allocation: numel x dtype size, rounded up to Arena::kAlignment.
int64_t arena_alloc_bytes(int64_t numel, DType dtype);

// Causal attention's score FLOPs for dims d at the shape's T (the convention above), in Phase::Attention.
LayerCost attention_scores_cost(const AttentionDims& d, const CostShape& s);

}  // namespace moelab
