#include "core/nn/config.h"

#include <cmath>

#include "core/check.h"

namespace moelab {

const char* attention_kind_name(AttentionKind k) {
  switch (k) {
    case AttentionKind::MLA: return "mla";
    case AttentionKind::MHA: return "mha";
    case AttentionKind::GQA: return "gqa";
  }
  return "?";
}
const char* ffn_kind_name(FfnKind k) { return k == FfnKind::Dense ? "dense" : "moe"; }
const char* score_func_name(ScoreFunc s) { return s == ScoreFunc::Sigmoid ? "sigmoid" : "softmax"; }

AttentionKind parse_attention_kind(const std::string& s) {
  for (AttentionKind k : {AttentionKind::MLA, AttentionKind::MHA, AttentionKind::GQA})
    if (s == attention_kind_name(k)) return k;
  MOELAB_FAIL("attention = '", s, "': expected mla, mha or gqa");
}
FfnKind parse_ffn_kind(const std::string& s) {
  for (FfnKind k : {FfnKind::Dense, FfnKind::MoE})
    if (s == ffn_kind_name(k)) return k;
  MOELAB_FAIL("ffn = '", s, "': expected dense or moe");
}
ScoreFunc parse_score_func(const std::string& s) {
  for (ScoreFunc k : {ScoreFunc::Sigmoid, ScoreFunc::Softmax})
    if (s == score_func_name(k)) return k;
  MOELAB_FAIL("scoring_func = '", s, "': expected sigmoid or softmax");
}

int64_t ModelConfig::mha_rope_dim() const {
  const auto r = static_cast<int64_t>(std::llround(partial_rotary_factor * static_cast<double>(mha_head_dim())));
  return r - r % 2;  // RoPE rotates pairs
}

int64_t ModelConfig::kv_heads() const { return attention == AttentionKind::GQA ? num_key_value_heads : num_attention_heads; }

#define MOELAB_RULE(cond, ...) MOELAB_CHECK(cond, "config: ", __VA_ARGS__)

void ModelConfig::validate() const {
  auto positive = [](const char* key, int64_t v) { MOELAB_RULE(v > 0, key, " = ", v, " must be > 0"); };
  auto non_negative = [](const char* key, double v) { MOELAB_RULE(v >= 0 && std::isfinite(v), key, " = ", v, " must be >= 0"); };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("max_position_embeddings", max_position_embeddings);
  positive("num_attention_heads", num_attention_heads);
  MOELAB_RULE(rms_norm_eps > 0 && rms_norm_eps < 1, "rms_norm_eps = ", rms_norm_eps, " must be in (0, 1)");
  MOELAB_RULE(rope_theta > 1, "rope_theta = ", rope_theta, " must be > 1");
  MOELAB_RULE(initializer_range > 0, "initializer_range = ", initializer_range, " must be > 0");

  if (attention == AttentionKind::MLA) {
    MOELAB_RULE(q_lora_rank >= 0, "q_lora_rank = ", q_lora_rank, " must be >= 0 (0 = no query compression)");
    positive("kv_lora_rank", kv_lora_rank);
    positive("qk_nope_head_dim", qk_nope_head_dim);
    positive("qk_rope_head_dim", qk_rope_head_dim);
    positive("v_head_dim", v_head_dim);
    MOELAB_RULE(qk_rope_head_dim % 2 == 0, "qk_rope_head_dim = ", qk_rope_head_dim, " must be even (RoPE rotates pairs)");
  } else {
    MOELAB_RULE(hidden_size % num_attention_heads == 0, "num_attention_heads = ", num_attention_heads,
                " does not divide hidden_size = ", hidden_size, " (", attention_kind_name(attention),
                " needs hidden_size % num_attention_heads == 0)");
    MOELAB_RULE(partial_rotary_factor >= 0 && partial_rotary_factor <= 1, "partial_rotary_factor = ",
                partial_rotary_factor, " must be in [0, 1]");
    if (attention == AttentionKind::GQA) {
      positive("num_key_value_heads", num_key_value_heads);
      MOELAB_RULE(num_attention_heads % num_key_value_heads == 0, "num_key_value_heads = ", num_key_value_heads,
                  " does not divide num_attention_heads = ", num_attention_heads);
    }
  }

  positive("intermediate_size", intermediate_size);
  if (ffn == FfnKind::MoE) {
    MOELAB_RULE(first_k_dense_replace >= 0 && first_k_dense_replace <= num_hidden_layers, "first_k_dense_replace = ",
                first_k_dense_replace, " must be in [0, num_hidden_layers = ", num_hidden_layers, "]");
    positive("moe_intermediate_size", moe_intermediate_size);
    positive("n_routed_experts", n_routed_experts);
    MOELAB_RULE(n_shared_experts >= 0, "n_shared_experts = ", n_shared_experts, " must be >= 0");
    positive("num_experts_per_tok", num_experts_per_tok);
    MOELAB_RULE(num_experts_per_tok <= n_routed_experts, "num_experts_per_tok = ", num_experts_per_tok,
                " exceeds n_routed_experts = ", n_routed_experts);
    positive("n_group", n_group);
    MOELAB_RULE(n_routed_experts % n_group == 0, "n_group = ", n_group, " does not divide n_routed_experts = ",
                n_routed_experts);
    positive("topk_group", topk_group);
    MOELAB_RULE(topk_group <= n_group, "topk_group = ", topk_group, " exceeds n_group = ", n_group);
    const int64_t per_group = n_routed_experts / n_group;
    MOELAB_RULE(topk_group * per_group >= num_experts_per_tok, "topk_group = ", topk_group, " groups of ", per_group,
                " experts hold fewer than num_experts_per_tok = ", num_experts_per_tok);
    MOELAB_RULE(n_group == 1 || per_group >= 2 || !aux_free_bias, "n_group = ", n_group, " leaves ", per_group,
                " expert per group; a group score sums the top-2 scores of its group");
    MOELAB_RULE(routed_scaling_factor > 0, "routed_scaling_factor = ", routed_scaling_factor, " must be > 0");
    non_negative("capacity_factor", capacity_factor);
    non_negative("bias_update_speed", bias_update_speed);
    non_negative("seq_aux_loss_alpha", seq_aux_loss_alpha);
    non_negative("aux_loss_alpha", aux_loss_alpha);
    non_negative("router_z_loss_coef", router_z_loss_coef);
  }
  MOELAB_RULE(num_nextn_predict_layers >= 0, "num_nextn_predict_layers = ", num_nextn_predict_layers, " must be >= 0");
  non_negative("mtp_loss_weight", mtp_loss_weight);
}

#undef MOELAB_RULE

}  // namespace moelab
