// ModelConfig: every knob of the model (../shared/MODEL.md), with the Hugging Face DeepSeek-V3
// config key as the field name wherever HF has one, so that export writes them as they are.
// moelab's own switches (attention, ffn, the balance terms, capacity_factor) are the ablations.
//
// validate() checks every rule and throws ConfigError naming the key, its value and the rule:
//   "config: num_attention_heads = 6 does not divide hidden_size = 64 (mha needs ...)"
//
// One field table (config.cpp, model_config_fields()) lists every field with its key (the field
// name), type and a one-line help; it drives set_config_key / get_config_key (text values, as in
// TOML files and `--set key=value`), to_json / model_config_from_json and operator==. Adding a
// field = adding it to the struct and one line to the table (a test checks that none is missing).
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/check.h"

namespace moelab {

// A config value that breaks a rule (unknown key, bad value, failed validation). what() is
// "<where>: <reason>" ("config: ..." by default; the TOML loader puts the file name there);
// reason() names the key, the value and the rule. No C++ file:line: the culprit is the config.
class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& reason, const std::string& where = "config")
      : Error(where + ": " + reason), reason_(reason) {}
  const std::string& reason() const { return reason_; }

 private:
  std::string reason_;
};

enum class AttentionKind { MLA, MHA, GQA };
enum class FfnKind { Dense, MoE };
enum class ScoreFunc { Sigmoid, Softmax };

const char* attention_kind_name(AttentionKind k);  // "mla", "mha", "gqa"
const char* ffn_kind_name(FfnKind k);              // "dense", "moe"
const char* score_func_name(ScoreFunc s);          // "sigmoid", "softmax"
AttentionKind parse_attention_kind(const std::string& s);  // errors name the key and the choices
FfnKind parse_ffn_kind(const std::string& s);
ScoreFunc parse_score_func(const std::string& s);

struct ModelConfig {
  // ---- trunk (B batch, T time, D model dim, V vocab, L layers) ----
  int64_t vocab_size = 256;                 // V
  int64_t hidden_size = 64;                 // D
  int64_t num_hidden_layers = 2;            // L
  int64_t max_position_embeddings = 256;    // longest T trained or sampled
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  double initializer_range = 0.02;          // std of the normal init of every matrix

  // ---- attention ----
  AttentionKind attention = AttentionKind::MLA;
  int64_t num_attention_heads = 4;          // H
  // MLA (MODEL.md "Multi-head latent attention")
  int64_t q_lora_rank = 0;                  // Cq; 0 = no query compression (q_proj)
  int64_t kv_lora_rank = 32;                // Ckv
  int64_t qk_nope_head_dim = 16;            // Dn
  int64_t qk_rope_head_dim = 8;             // Dr
  int64_t v_head_dim = 16;                  // Dv
  // MHA / GQA baselines: head_dim = hidden_size / H; RoPE on the last
  // partial_rotary_factor * head_dim dims of each head (1.0 = all of it).
  int64_t num_key_value_heads = 4;          // Hkv (GQA; MHA uses H)
  double partial_rotary_factor = 1.0;

  // ---- feed-forward ----
  FfnKind ffn = FfnKind::MoE;               // dense: every layer is a dense SwiGLU
  int64_t intermediate_size = 128;          // dense SwiGLU width (dense layers and the dense baseline)
  int64_t first_k_dense_replace = 0;        // the first k layers stay dense when ffn = moe
  int64_t moe_intermediate_size = 32;       // F, width of each expert
  int64_t n_routed_experts = 8;             // E
  int64_t n_shared_experts = 1;             // one SwiGLU of width n_shared_experts * F
  int64_t num_experts_per_tok = 2;          // K
  ScoreFunc scoring_func = ScoreFunc::Sigmoid;
  int64_t n_group = 1;                      // G expert groups for group-limited routing
  int64_t topk_group = 1;                   // M groups kept per token
  // Node-limited routing (DeepSeek-V3's rule for expert parallelism): the routed experts are spread
  // over expert_nodes nodes in contiguous equal ranges; a token first keeps the <= max_nodes_per_token
  // nodes whose experts' top-ceil(K / max_nodes_per_token) selection scores sum highest, then its
  // top-K experts among them. 0 = unlimited. In force only when expert_nodes > max_nodes_per_token.
  int64_t max_nodes_per_token = 0;
  // The number of nodes the routed experts are spread over (1: one node, no limit). Part of the
  // model, like n_group, so that one process, a checkpoint and an export route as the distributed
  // run did; an expert-parallel run checks it against its layout (dist.ep / dist.ranks_per_node).
  int64_t expert_nodes = 1;
  bool norm_topk_prob = true;               // sigmoid: g = s / sum(s over the top-K)
  double routed_scaling_factor = 1.0;
  double capacity_factor = 0.0;             // 0 = dropless; c > 0 caps an expert at ceil(c*N*K/E) tokens

  // ---- load balancing (each term on its own, combinable) ----
  bool aux_free_bias = true;                // route with s + b, b updated after each step
  double bias_update_speed = 0.001;         // gamma
  double seq_aux_loss_alpha = 0.0;          // sequence-wise balance loss (V3: 1e-4); 0 = off
  double aux_loss_alpha = 0.0;              // batch-level balance loss (e.g. 0.01); 0 = off
  double router_z_loss_coef = 0.0;          // router z-loss (e.g. 1e-3); 0 = off

  // ---- multi-token prediction ----
  int64_t num_nextn_predict_layers = 0;     // D_mtp
  double mtp_loss_weight = 0.3;             // lambda

  // Throws moelab::Error on the first broken rule, naming key, value and rule.
  void validate() const;

  bool is_moe_layer(int64_t layer) const { return ffn == FfnKind::MoE && layer >= first_k_dense_replace; }
  // Whether routing is node-limited: a limit is set and the experts span more nodes than it.
  bool node_limited() const { return max_nodes_per_token > 0 && expert_nodes > max_nodes_per_token; }
  // ceil(K / max_nodes_per_token): how many best selection scores a node's score sums.
  int64_t node_score_topk() const;
  // The group arguments of moe_route_topk (core/ops/moe_route.h) for this config: the nodes as
  // groups when node_limited(), else n_group / topk_group with Hugging Face's group score (0).
  struct RouteGroups {
    int64_t n_group, topk_group, group_topk;
  };
  RouteGroups route_groups() const;
  int64_t mha_head_dim() const { return hidden_size / num_attention_heads; }
  int64_t mha_rope_dim() const;             // even, <= head_dim
  int64_t kv_heads() const;                 // Hkv of the attention in use (MHA: H, MLA: H)
};

// ---- the field table ----
struct ModelConfigField {
  using Member = std::variant<int64_t ModelConfig::*, double ModelConfig::*, bool ModelConfig::*,
                              AttentionKind ModelConfig::*, FfnKind ModelConfig::*, ScoreFunc ModelConfig::*>;
  const char* name;  // the key: the field name (the HF config key where HF has one)
  const char* help;  // one line
  Member member;

  std::string type() const;  // "integer", "number", "bool", "mla | mha | gqa", ...
};
const std::vector<ModelConfigField>& model_config_fields();  // in declaration order

// Text values: integers (TOML underscores allowed: 102_400), numbers, bools true/false, enums by
// their lowercase names. Errors name the key and the value and what was expected:
//   "config: num_attention_heads = 'abc' is not an integer"
//   "config: unknown key 'hiden_size' (did you mean 'hidden_size'?)"
// set_config_key does not validate(): call it after the last key.
void set_config_key(ModelConfig& cfg, const std::string& key, const std::string& value);
std::string get_config_key(const ModelConfig& cfg, const std::string& key);  // round-trips exactly
bool has_config_key(const std::string& key);

// JSON: every field; enums as their lowercase names, bools as bools, numbers as numbers.
// model_config_from_json: unknown keys and wrongly typed values are errors; missing keys keep
// their defaults; does not validate().
nlohmann::json to_json(const ModelConfig& cfg);
ModelConfig model_config_from_json(const nlohmann::json& j);

bool operator==(const ModelConfig& a, const ModelConfig& b);  // field by field, through the table
inline bool operator!=(const ModelConfig& a, const ModelConfig& b) { return !(a == b); }

// ---- helpers for the other config tables (train/) ----
// Strict parsers of one text value: the whole text must be the value. Errors as above.
int64_t parse_config_int(const std::string& key, const std::string& value);
double parse_config_number(const std::string& key, const std::string& value);  // finite only
bool parse_config_bool(const std::string& key, const std::string& value);      // true / false
// The shortest text that parses back to exactly v ("1e-06", "0.3", "10000").
std::string format_config_number(double v);
// " (did you mean 'x'?)" for the candidate within edit distance 2 of key (the closest; ties: the
// first), else "". quote_open/quote_close wrap the suggestion ("'" or "[" and "]").
std::string did_you_mean(const std::string& key, const std::vector<std::string>& candidates,
                         const char* quote_open = "'", const char* quote_close = "'");
size_t edit_distance(const std::string& a, const std::string& b);  // Levenshtein

}  // namespace moelab
