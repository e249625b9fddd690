// ModelConfig: the enum names, the field table and what it drives (text and JSON values), and
// validate(). See config.h.
#include "core/nn/config.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

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
  throw ConfigError("attention = '" + s + "' is not one of mla, mha, gqa");
}
FfnKind parse_ffn_kind(const std::string& s) {
  for (FfnKind k : {FfnKind::Dense, FfnKind::MoE})
    if (s == ffn_kind_name(k)) return k;
  throw ConfigError("ffn = '" + s + "' is not one of dense, moe");
}
ScoreFunc parse_score_func(const std::string& s) {
  for (ScoreFunc k : {ScoreFunc::Sigmoid, ScoreFunc::Softmax})
    if (s == score_func_name(k)) return k;
  throw ConfigError("scoring_func = '" + s + "' is not one of sigmoid, softmax");
}

// ---- text values ----

int64_t parse_config_int(const std::string& key, const std::string& value) {
  // TOML allows one underscore between two digits: 102_400.
  std::string digits;
  bool ok = !value.empty();
  for (size_t i = 0; i < value.size() && ok; ++i) {
    const char c = value[i];
    if (c == '_') {
      auto digit = [&](size_t j) { return std::isdigit(static_cast<unsigned char>(value[j])) != 0; };
      ok = i > 0 && i + 1 < value.size() && digit(i - 1) && digit(i + 1);
    } else {
      ok = std::isdigit(static_cast<unsigned char>(c)) || ((c == '-' || c == '+') && i == 0 && value.size() > 1);
      digits += c;
    }
  }
  if (!ok) throw ConfigError(key + " = '" + value + "' is not an integer");
  errno = 0;
  char* end = nullptr;
  const long long v = std::strtoll(digits.c_str(), &end, 10);
  if (errno == ERANGE || end != digits.c_str() + digits.size())
    throw ConfigError(key + " = '" + value + "' is out of the range of a 64-bit integer");
  return static_cast<int64_t>(v);
}

double parse_config_number(const std::string& key, const std::string& value) {
  // strtod skips leading blanks and stops early: the whole text must be the number.
  const bool blank = value.empty() || std::isspace(static_cast<unsigned char>(value[0]));
  char* end = nullptr;
  const double v = blank ? 0.0 : std::strtod(value.c_str(), &end);
  if (blank || end != value.c_str() + value.size()) throw ConfigError(key + " = '" + value + "' is not a number");
  if (!std::isfinite(v)) throw ConfigError(key + " = '" + value + "' is not a finite number");
  return v;
}

bool parse_config_bool(const std::string& key, const std::string& value) {
  if (value == "true") return true;
  if (value == "false") return false;
  throw ConfigError(key + " = '" + value + "' is not a bool (true or false)");
}

std::string format_config_number(double v) {
  char buf[40];
  for (int precision = 1; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof(buf), "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  // Whole numbers in full ("10000", not "1e+04"), then marked as floats for TOML/JSON: "10000.0".
  if (v == std::trunc(v) && std::fabs(v) < 1e16) {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    s = buf;
  }
  if (s.find_first_of(".eEn") == std::string::npos) s += ".0";
  return s;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string did_you_mean(const std::string& key, const std::vector<std::string>& candidates, const char* quote_open,
                         const char* quote_close) {
  constexpr size_t kMaxDistance = 2;
  const std::string* best = nullptr;
  size_t best_d = kMaxDistance + 1;
  for (const std::string& c : candidates) {
    const size_t d = edit_distance(key, c);
    if (d < best_d) best = &c, best_d = d;
  }
  return best ? std::string(" (did you mean ") + quote_open + *best + quote_close + "?)" : std::string();
}

// ---- the field table ----

namespace {

using Field = ModelConfigField;

// Per-type codecs, picked by overload on the member's type.
void parse_into(const std::string& key, const std::string& v, int64_t& out) { out = parse_config_int(key, v); }
void parse_into(const std::string& key, const std::string& v, double& out) { out = parse_config_number(key, v); }
void parse_into(const std::string& key, const std::string& v, bool& out) { out = parse_config_bool(key, v); }
void parse_into(const std::string&, const std::string& v, AttentionKind& out) { out = parse_attention_kind(v); }
void parse_into(const std::string&, const std::string& v, FfnKind& out) { out = parse_ffn_kind(v); }
void parse_into(const std::string&, const std::string& v, ScoreFunc& out) { out = parse_score_func(v); }

std::string format(int64_t v) { return std::to_string(v); }
std::string format(double v) { return format_config_number(v); }
std::string format(bool v) { return v ? "true" : "false"; }
std::string format(AttentionKind v) { return attention_kind_name(v); }
std::string format(FfnKind v) { return ffn_kind_name(v); }
std::string format(ScoreFunc v) { return score_func_name(v); }

const char* type_name(int64_t) { return "integer"; }
const char* type_name(double) { return "number"; }
const char* type_name(bool) { return "bool"; }
const char* type_name(AttentionKind) { return "mla | mha | gqa"; }
const char* type_name(FfnKind) { return "dense | moe"; }
const char* type_name(ScoreFunc) { return "sigmoid | softmax"; }

nlohmann::json json_value(int64_t v) { return v; }
nlohmann::json json_value(double v) { return v; }
nlohmann::json json_value(bool v) { return v; }
template <typename Enum>
nlohmann::json json_value(Enum v) { return format(v); }

// JSON -> field, with the JSON type checked (a quoted number or 0/1 for a bool is an error).
std::string json_text(const nlohmann::json& j) { return j.dump(); }
void from_json_into(const std::string& key, const nlohmann::json& j, int64_t& out) {
  if (!j.is_number_integer()) throw ConfigError(key + " = " + json_text(j) + " is not an integer");
  if (j.is_number_unsigned() && j.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
    throw ConfigError(key + " = " + json_text(j) + " is out of the range of a 64-bit integer");
  out = j.get<int64_t>();
}
void from_json_into(const std::string& key, const nlohmann::json& j, double& out) {
  if (!j.is_number()) throw ConfigError(key + " = " + json_text(j) + " is not a number");
  out = j.get<double>();
}
void from_json_into(const std::string& key, const nlohmann::json& j, bool& out) {
  if (!j.is_boolean()) throw ConfigError(key + " = " + json_text(j) + " is not a bool (true or false)");
  out = j.get<bool>();
}
template <typename Enum>
void from_json_into(const std::string& key, const nlohmann::json& j, Enum& out) {
  if (!j.is_string()) throw ConfigError(key + " = " + json_text(j) + " is not a string (" + type_name(out) + ")");
  parse_into(key, j.get<std::string>(), out);
}

// Every field of ModelConfig, in declaration order.
const std::vector<Field> kFields = {
    // trunk
    {"vocab_size", "V, the vocabulary size (embedding and LM head rows)", &ModelConfig::vocab_size},
    {"hidden_size", "D, the model width", &ModelConfig::hidden_size},
    {"num_hidden_layers", "L, the transformer blocks (MTP blocks not included)", &ModelConfig::num_hidden_layers},
    {"max_position_embeddings", "the longest sequence T trained or sampled", &ModelConfig::max_position_embeddings},
    {"rms_norm_eps", "epsilon of every RMSNorm", &ModelConfig::rms_norm_eps},
    {"rope_theta", "RoPE base frequency theta", &ModelConfig::rope_theta},
    {"tie_word_embeddings", "the LM head reuses the embedding matrix", &ModelConfig::tie_word_embeddings},
    {"initializer_range", "std of the normal init of every matrix", &ModelConfig::initializer_range},
    // attention
    {"attention", "attention kind: mla (latent), mha or gqa (baselines)", &ModelConfig::attention},
    {"num_attention_heads", "H, the attention (query) heads", &ModelConfig::num_attention_heads},
    {"q_lora_rank", "Cq, MLA query latent width; 0 = no query compression", &ModelConfig::q_lora_rank},
    {"kv_lora_rank", "Ckv, MLA key/value latent width (what the KV cache holds)", &ModelConfig::kv_lora_rank},
    {"qk_nope_head_dim", "Dn, MLA per-head query/key dims without RoPE", &ModelConfig::qk_nope_head_dim},
    {"qk_rope_head_dim", "Dr, MLA per-head query/key dims with RoPE (even)", &ModelConfig::qk_rope_head_dim},
    {"v_head_dim", "Dv, MLA per-head value dims", &ModelConfig::v_head_dim},
    {"num_key_value_heads", "Hkv, key/value heads of gqa (must divide H)", &ModelConfig::num_key_value_heads},
    {"partial_rotary_factor", "mha/gqa: fraction of head_dim = D/H that gets RoPE",
     &ModelConfig::partial_rotary_factor},
    // feed-forward
    {"ffn", "feed-forward kind: moe (DeepSeekMoE) or dense (SwiGLU everywhere)", &ModelConfig::ffn},
    {"intermediate_size", "width of the dense SwiGLU (dense layers and the dense baseline)",
     &ModelConfig::intermediate_size},
    {"first_k_dense_replace", "ffn = moe: the first k layers keep a dense SwiGLU", &ModelConfig::first_k_dense_replace},
    {"moe_intermediate_size", "F, the width of each expert", &ModelConfig::moe_intermediate_size},
    {"n_routed_experts", "E, the routed experts per MoE layer", &ModelConfig::n_routed_experts},
    {"n_shared_experts", "shared experts (one SwiGLU of width n_shared_experts * F)", &ModelConfig::n_shared_experts},
    {"num_experts_per_tok", "K, routed experts chosen per token", &ModelConfig::num_experts_per_tok},
    {"scoring_func", "router scores: sigmoid (V3) or softmax (V2)", &ModelConfig::scoring_func},
    {"n_group", "G, expert groups for group-limited routing (1 = off)", &ModelConfig::n_group},
    {"topk_group", "M, expert groups kept per token", &ModelConfig::topk_group},
    {"max_nodes_per_token", "node-limited routing: most nodes a token's experts span; 0 = unlimited",
     &ModelConfig::max_nodes_per_token},
    {"expert_nodes", "nodes the routed experts are spread over in equal ranges (expert parallelism: dist.ep / "
     "dist.ranks_per_node)", &ModelConfig::expert_nodes},
    {"norm_topk_prob", "renormalise the K gate values to sum to 1", &ModelConfig::norm_topk_prob},
    {"routed_scaling_factor", "multiplies the routed gate values (V3: 2.5)", &ModelConfig::routed_scaling_factor},
    {"capacity_factor", "0 = dropless; c > 0 caps an expert at ceil(c*N*K/E) tokens", &ModelConfig::capacity_factor},
    // load balancing
    {"aux_free_bias", "auxiliary-loss-free balancing: route with s + b", &ModelConfig::aux_free_bias},
    {"bias_update_speed", "gamma, the aux-free bias step after each optimizer step", &ModelConfig::bias_update_speed},
    {"seq_aux_loss_alpha", "sequence-wise balance loss weight (V3: 1e-4; 0 = off)", &ModelConfig::seq_aux_loss_alpha},
    {"aux_loss_alpha", "batch-level balance loss weight (e.g. 0.01; 0 = off)", &ModelConfig::aux_loss_alpha},
    {"router_z_loss_coef", "router z-loss weight (e.g. 1e-3; 0 = off)", &ModelConfig::router_z_loss_coef},
    // multi-token prediction
    {"num_nextn_predict_layers", "D_mtp, multi-token prediction depth (0 = off)",
     &ModelConfig::num_nextn_predict_layers},
    {"mtp_loss_weight", "lambda, the weight of the MTP losses", &ModelConfig::mtp_loss_weight},
};

std::vector<std::string> field_names() {
  std::vector<std::string> names;
  for (const Field& f : kFields) names.emplace_back(f.name);
  return names;
}

const Field* find_field(const std::string& key) {
  for (const Field& f : kFields)
    if (key == f.name) return &f;
  return nullptr;
}

const Field& field_or_throw(const std::string& key) {
  if (const Field* f = find_field(key)) return *f;
  throw ConfigError("unknown key '" + key + "'" + did_you_mean(key, field_names()));
}

}  // namespace

std::string ModelConfigField::type() const {
  return std::visit([](auto m) { return std::string(type_name(ModelConfig{}.*m)); }, member);
}

const std::vector<ModelConfigField>& model_config_fields() { return kFields; }

bool has_config_key(const std::string& key) { return find_field(key) != nullptr; }

void set_config_key(ModelConfig& cfg, const std::string& key, const std::string& value) {
  std::visit([&](auto m) { parse_into(key, value, cfg.*m); }, field_or_throw(key).member);
}

std::string get_config_key(const ModelConfig& cfg, const std::string& key) {
  return std::visit([&](auto m) { return format(cfg.*m); }, field_or_throw(key).member);
}

nlohmann::json to_json(const ModelConfig& cfg) {
  nlohmann::json j = nlohmann::json::object();
  for (const Field& f : kFields) j[f.name] = std::visit([&](auto m) { return json_value(cfg.*m); }, f.member);
  return j;
}

ModelConfig model_config_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw ConfigError("expected a JSON object of model keys, got " + json_text(j));
  ModelConfig cfg;
  for (const auto& [key, value] : j.items())
    std::visit([&, &key = key, &value = value](auto m) { from_json_into(key, value, cfg.*m); },
               field_or_throw(key).member);
  return cfg;
}

bool operator==(const ModelConfig& a, const ModelConfig& b) {
  for (const Field& f : kFields)
    if (!std::visit([&](auto m) { return a.*m == b.*m; }, f.member)) return false;
  return true;
}

int64_t ModelConfig::mha_rope_dim() const {
  const auto r = static_cast<int64_t>(std::llround(partial_rotary_factor * static_cast<double>(mha_head_dim())));
  return r - r % 2;  // RoPE rotates pairs
}

int64_t ModelConfig::node_score_topk() const {
  MOELAB_CHECK(max_nodes_per_token > 0, "node_score_topk: max_nodes_per_token = ", max_nodes_per_token,
               ", expected > 0 (node-limited routing)");
  return (num_experts_per_tok + max_nodes_per_token - 1) / max_nodes_per_token;
}

ModelConfig::RouteGroups ModelConfig::route_groups() const {
  if (node_limited()) return {expert_nodes, max_nodes_per_token, node_score_topk()};
  return {n_group, topk_group, 0};
}

int64_t ModelConfig::kv_heads() const { return attention == AttentionKind::GQA ? num_key_value_heads : num_attention_heads; }

// A broken rule throws ConfigError("config: <key> = <value> <rule>").
#define MOELAB_RULE(cond, ...)                                                      \
  do {                                                                              \
    if (!(cond)) throw ::moelab::ConfigError(::moelab::detail::concat(__VA_ARGS__)); \
  } while (0)

void ModelConfig::validate() const {
  auto positive = [](const char* key, int64_t v) { MOELAB_RULE(v > 0, key, " = ", v, " must be > 0"); };
  auto non_negative = [](const char* key, double v) { MOELAB_RULE(v >= 0 && std::isfinite(v), key, " = ", v, " must be >= 0"); };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("max_position_embeddings", max_position_embeddings);
  positive("num_attention_heads", num_attention_heads);
  MOELAB_RULE(rms_norm_eps > 0 && rms_norm_eps < 1, "rms_norm_eps = ", rms_norm_eps, " must be in (0, 1)");
  MOELAB_RULE(vocab_size <= INT32_MAX, "vocab_size = ", vocab_size, " must fit the int32 token ids (<= ", INT32_MAX,
              ")");
  MOELAB_RULE(rope_theta > 1 && std::isfinite(rope_theta), "rope_theta = ", rope_theta, " must be > 1 and finite");
  MOELAB_RULE(initializer_range > 0 && std::isfinite(initializer_range), "initializer_range = ", initializer_range,
              " must be > 0 and finite");

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
    MOELAB_RULE(max_nodes_per_token >= 0, "max_nodes_per_token = ", max_nodes_per_token,
                " must be >= 0 (0 = unlimited)");
    MOELAB_RULE(expert_nodes >= 1, "expert_nodes = ", expert_nodes,
                " must be >= 1 (the nodes the routed experts are spread over)");
    MOELAB_RULE(n_routed_experts % expert_nodes == 0, "expert_nodes = ", expert_nodes,
                " does not divide n_routed_experts = ", n_routed_experts,
                " (each node holds an equal contiguous range of experts)");
    if (node_limited()) {
      // The nodes are the groups of node-limited routing, so a second group limit has no place.
      MOELAB_RULE(n_group == 1, "max_nodes_per_token = ", max_nodes_per_token, " with expert_nodes = ", expert_nodes,
                  " limits the nodes a token reaches, but n_group = ", n_group,
                  " already limits its groups; set n_group = 1 (node-limited routing uses the nodes as groups)");
      const int64_t per_node = n_routed_experts / expert_nodes, summed = node_score_topk();
      MOELAB_RULE(per_node >= summed, "max_nodes_per_token = ", max_nodes_per_token, " with expert_nodes = ",
                  expert_nodes, " scores a node by the sum of its top ceil(num_experts_per_tok / max_nodes_per_token)",
                  " = ", summed, " experts, but each node holds only n_routed_experts / expert_nodes = ", per_node);
    }
    MOELAB_RULE(routed_scaling_factor > 0 && std::isfinite(routed_scaling_factor), "routed_scaling_factor = ",
                routed_scaling_factor, " must be > 0 and finite");
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
