// What a model costs, as its layers report it (core/nn/cost.h), for `moelab info --config`, the
// bench's MFU and the arena's size: parameters by component (total, and active per token: every
// routed expert but the K of E a token is sent to is idle), training FLOPs per token (MODEL.md,
// "Counting for MFU"), the KV cache of generation (MLA's point, MODEL.md "Multi-head latent
// attention"), and the activation memory of one step.
//
// Conventions, which the report also prints:
// - FLOPs per token of one training step = 3 x forward (backward = 2 x forward):
//     6 x (active matmul parameters: attention projections, dense FFN or shared + K routed experts,
//          router, eh_proj of the MTP modules, and the LM head once per loss head (main + D_mtp),
//          also when tied; not the embedding lookup, not the norms)
//   + attention scores: 6 x L' x T x H x (Dqk + Dv) / 2, L' = L + D_mtp blocks, counting HALF of
//     the T^2 work because the mask is causal (MLA: Dqk = Dn + Dr, Dv; MHA/GQA: Dqk = Dv = D/H).
//     flops_attention_full keeps the whole square (PaLM's convention) for comparison.
// - KV cache: bf16 (2 bytes) per token per layer. MLA caches ckv and rope(kr): (Ckv + Dr) x 2;
//   MHA/GQA: 2 x Hkv x head_dim x 2. The MHA equivalent of an MLA config caches H x (Dn + Dr) keys
//   and H x Dv values.
// - Activations: activation_bytes() is the layers' count of the step's arena: every tensor forward
//   and backward allocate, in the dtype they allocate it in, dropless (core/nn/cost.h), an upper
//   bound of Arena::peak() (tests/nn/test_cost.cpp). The act_* fields break down the part that the
//   layers keep for backward, per token in 4-byte elements (fp32 activations and i32 indices).
#pragma once

#include <cstdint>
#include <string>

#include "core/nn/config.h"
#include "core/nn/cost.h"

namespace moelab {

class Model;

struct ParamCount {
  int64_t total = 0;
  int64_t active = 0;  // per token
};

struct ModelInfo {
  // Parameters by component; the trunk's parts, then the MTP modules (all of each module: its
  // norms, eh_proj and block) as one part. Components sum to `params`.
  ParamCount embedding, attention, dense_ffn, shared_experts, routed_experts, router, norms, lm_head, mtp, other;
  ParamCount mtp_routed_experts;  // the routed experts inside the MTP blocks (a part of `mtp`)
  ParamCount params;              // everything
  int64_t buffers = 0;            // non-gradient buffers (aux-loss-free biases), not in `params`

  // Training FLOPs per token.
  int64_t matmul_params = 0;   // active matmul parameters per token, LM head counted per loss head
  double flops_matmul = 0;     // 6 x matmul_params
  double flops_attention = 0;  // causal half
  double flops_attention_full = 0;
  double flops_per_token = 0;  // flops_matmul + flops_attention

  // KV cache, bytes per token per layer in bf16.
  int64_t kv_bytes = 0;
  int64_t kv_bytes_mha = 0;  // MHA with the same H and head dims (= kv_bytes for MHA)

  // What backward keeps, in 4-byte elements per token (see the header comment).
  int64_t act_dense_layer = 0;  // one block with a dense FFN (0 when there is none)
  int64_t act_moe_layer = 0;    // one block with an MoE FFN (0 when there is none)
  int64_t act_layers = 0;       // the L trunk blocks together
  int64_t act_head = 0;         // per loss head: final norm, logits (V), log-sum-exp, losses, ids
  int64_t act_mtp = 0;          // the D_mtp modules (inputs, block, head) together
  int64_t act_total = 0;        // embedding output + act_layers + act_head + act_mtp
  int64_t batch = 0, seq_len = 0;
  double saved_bytes() const { return 4.0 * static_cast<double>(act_total) * static_cast<double>(batch * seq_len); }
  double logits_bytes() const;  // the part of saved_bytes() that is the logits
  int64_t loss_heads = 1;       // 1 + D_mtp
  int64_t vocab = 0;

  // The whole model's cost at (batch, seq_len) in the activation dtype `act` (core/nn/cost.h);
  // activation_bytes() is the step's arena in that dtype, and the report gives both precisions.
  DType act = DType::F32;
  LayerCost cost;
  double activation_bytes() const { return static_cast<double>(cost.activation_bytes); }
  double activation_bytes_f32 = 0, activation_bytes_bf16 = 0;

  // What the attention layer says about itself, for the report.
  AttentionDims attention_dims;
  std::string attention_shape;   // Block::describe_attention()
  std::string kv_cache_formula;  // Block::kv_cache_formula()
};

// From the model's layers, and its declared (not necessarily allocated) parameters, whose names
// decide the component (a name that fits none is counted in `other`). `act` is the activation dtype
// the step will run in (train/runtime.h: f32 on the CPU, bf16 in mixed precision on CUDA).
ModelInfo model_info(const Model& model, int64_t batch, int64_t seq_len, DType act = DType::F32);

// One config's figures on their own (the conventions above), from a block declared for it.
double attention_flops_per_token(const ModelConfig& cfg, int64_t seq_len, bool causal_half = true);
int64_t kv_cache_bytes_per_token_layer(const ModelConfig& cfg);
int64_t mha_kv_cache_bytes_per_token_layer(const ModelConfig& cfg);  // MHA with the same H and head dims

// The human-readable report `moelab info --config` prints (several lines, ending in a newline).
std::string format_model_info(const ModelConfig& cfg, const ModelInfo& info);

}  // namespace moelab
