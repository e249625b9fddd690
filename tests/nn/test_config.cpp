// ModelConfig's field table (set/get by key, JSON, equality) and every validate() rule: each error
// must name the key, the value and the rule.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "core/nn/config.h"
#include "tests/harness.h"

namespace moelab {
namespace {

using moelab::testing::config_error;

::testing::AssertionResult names_all(const std::string& message, const std::vector<std::string>& parts) {
  for (const std::string& p : parts)
    if (message.find(p) == std::string::npos)
      return ::testing::AssertionFailure() << "'" << message << "' does not contain '" << p << "'";
  return ::testing::AssertionSuccess();
}

// ---- the field table ----

TEST(ConfigTable, CoversEveryFieldOfModelConfig) {
  // Default-construct ModelConfig over two different byte patterns: the bytes that come out equal
  // were written by a member initialiser (a field), the others are padding. Every field byte must
  // belong to a table entry, so a field missing from the table fails here.
  alignas(ModelConfig) unsigned char a[sizeof(ModelConfig)], b[sizeof(ModelConfig)];
  std::memset(a, 0xAA, sizeof(a));
  std::memset(b, 0x55, sizeof(b));
  auto* ca = new (a) ModelConfig;  // default-initialisation: padding keeps the pattern
  new (b) ModelConfig;
  std::vector<bool> covered(sizeof(ModelConfig), false);
  for (const ModelConfigField& f : model_config_fields()) {
    std::visit(
        [&](auto m) {
          const auto* p = reinterpret_cast<const unsigned char*>(&(ca->*m));
          for (size_t i = 0; i < sizeof(ca->*m); ++i) covered[static_cast<size_t>(p - a) + i] = true;
        },
        f.member);
  }
  for (size_t i = 0; i < sizeof(ModelConfig); ++i)
    if (a[i] == b[i]) {
      EXPECT_TRUE(covered[i]) << "byte " << i << " of ModelConfig belongs to no table entry";
    }
}

TEST(ConfigTable, NamesAreUniqueWithHelpAndType) {
  std::set<std::string> names;
  for (const ModelConfigField& f : model_config_fields()) {
    EXPECT_TRUE(names.insert(f.name).second) << f.name;
    EXPECT_GT(std::strlen(f.help), 10u) << f.name;
    EXPECT_FALSE(f.type().empty()) << f.name;
    EXPECT_TRUE(has_config_key(f.name));
  }
  EXPECT_EQ(model_config_fields().front().name, std::string("vocab_size"));
  EXPECT_FALSE(has_config_key("hidden"));
}

TEST(ConfigTable, GetReturnsTheDefaultsAsText) {
  const ModelConfig c;
  EXPECT_EQ(get_config_key(c, "hidden_size"), "64");
  EXPECT_EQ(get_config_key(c, "rms_norm_eps"), "1e-06");
  EXPECT_EQ(get_config_key(c, "rope_theta"), "10000.0");
  EXPECT_EQ(get_config_key(c, "mtp_loss_weight"), "0.3");
  EXPECT_EQ(get_config_key(c, "tie_word_embeddings"), "false");
  EXPECT_EQ(get_config_key(c, "attention"), "mla");
  EXPECT_EQ(get_config_key(c, "ffn"), "moe");
  EXPECT_EQ(get_config_key(c, "scoring_func"), "sigmoid");
}

TEST(ConfigTable, SetThenGetEveryField) {
  // A value other than the default for every field: set it as text, read it back, and check that
  // it changed exactly that field (the others still equal the defaults).
  for (const ModelConfigField& f : model_config_fields()) {
    const ModelConfig defaults;
    ModelConfig c;
    const std::string old = get_config_key(c, f.name);
    const std::string type = f.type();
    std::string value;
    if (type == "integer") value = old == "7" ? "9" : "7";
    else if (type == "number") value = old == "0.125" ? "0.25" : "0.125";
    else if (type == "bool") value = old == "true" ? "false" : "true";
    else if (type == "mla | mha | gqa") value = "gqa";
    else if (type == "dense | moe") value = "dense";
    else if (type == "sigmoid | softmax") value = "softmax";
    else FAIL() << "untested type " << type << " of " << f.name;
    set_config_key(c, f.name, value);
    EXPECT_EQ(get_config_key(c, f.name), value) << f.name;
    EXPECT_NE(c, defaults) << f.name;
    set_config_key(c, f.name, old);
    EXPECT_EQ(c, defaults) << f.name;
  }
}

TEST(ConfigTable, IntegerValues) {
  ModelConfig c;
  set_config_key(c, "vocab_size", "102_400");  // TOML digit separators
  EXPECT_EQ(c.vocab_size, 102400);
  set_config_key(c, "q_lora_rank", "-3");  // parsed; validate() rejects it
  EXPECT_EQ(c.q_lora_rank, -3);
  set_config_key(c, "hidden_size", "+12");
  EXPECT_EQ(c.hidden_size, 12);
  for (const char* bad : {"abc", "1.5", "", "1e3", "12abc", " 12", "1__0", "_1", "1_", "-", "0x10"})
    EXPECT_TRUE(names_all(config_error([&] { set_config_key(c, "num_attention_heads", bad); }),
                          {"config: num_attention_heads = '" + std::string(bad) + "' is not an integer"}));
  EXPECT_TRUE(names_all(config_error([&] { set_config_key(c, "hidden_size", "99999999999999999999"); }),
                        {"hidden_size = '99999999999999999999'", "range"}));
}

TEST(ConfigTable, NumberValues) {
  ModelConfig c;
  set_config_key(c, "rms_norm_eps", "1e-5");
  EXPECT_EQ(c.rms_norm_eps, 1e-5);
  set_config_key(c, "rope_theta", "500000");
  EXPECT_EQ(c.rope_theta, 500000.0);
  for (const char* bad : {"abc", "", "1.0x", " 1", "0.1 "})
    EXPECT_TRUE(names_all(config_error([&] { set_config_key(c, "rope_theta", bad); }),
                          {"rope_theta = '" + std::string(bad) + "' is not a number"}));
  for (const char* bad : {"nan", "inf", "-inf", "1e999"})
    EXPECT_TRUE(names_all(config_error([&] { set_config_key(c, "rope_theta", bad); }),
                          {"rope_theta = '" + std::string(bad) + "' is not a finite number"}));
}

TEST(ConfigTable, BoolAndEnumValues) {
  ModelConfig c;
  set_config_key(c, "tie_word_embeddings", "true");
  EXPECT_TRUE(c.tie_word_embeddings);
  for (const char* bad : {"1", "True", "yes", ""})
    EXPECT_TRUE(names_all(config_error([&] { set_config_key(c, "tie_word_embeddings", bad); }),
                          {"tie_word_embeddings = '" + std::string(bad) + "' is not a bool (true or false)"}));
  set_config_key(c, "attention", "mha");
  EXPECT_EQ(c.attention, AttentionKind::MHA);
  EXPECT_TRUE(names_all(config_error([&] { set_config_key(c, "attention", "MLA"); }),
                        {"config: attention = 'MLA'", "mla, mha, gqa"}));
  EXPECT_TRUE(names_all(config_error([&] { set_config_key(c, "ffn", "sparse"); }), {"ffn = 'sparse'", "dense, moe"}));
  EXPECT_TRUE(names_all(config_error([&] { set_config_key(c, "scoring_func", "relu"); }),
                        {"scoring_func = 'relu'", "sigmoid, softmax"}));
}

TEST(ConfigTable, UnknownKeySuggestsTheClosest) {
  ModelConfig c;
  EXPECT_EQ(config_error([&] { set_config_key(c, "hiden_size", "64"); }),
            "config: unknown key 'hiden_size' (did you mean 'hidden_size'?)");
  EXPECT_EQ(config_error([&] { get_config_key(c, "n_routed_expert"); }),
            "config: unknown key 'n_routed_expert' (did you mean 'n_routed_experts'?)");
  EXPECT_EQ(config_error([&] { set_config_key(c, "learning_rate", "1"); }), "config: unknown key 'learning_rate'");
}

TEST(ConfigTable, EditDistanceAndDidYouMean) {
  EXPECT_EQ(edit_distance("", ""), 0u);
  EXPECT_EQ(edit_distance("abc", ""), 3u);
  EXPECT_EQ(edit_distance("kitten", "sitting"), 3u);
  EXPECT_EQ(edit_distance("modle", "model"), 2u);  // a transposition is two edits
  EXPECT_EQ(did_you_mean("modle", {"model", "train"}, "[", "]"), " (did you mean [model]?)");
  EXPECT_EQ(did_you_mean("xyz", {"model", "train"}), "");
  EXPECT_EQ(did_you_mean("ab", {"abcd", "abc"}), " (did you mean 'abc'?)");  // the closest, not the first
}

TEST(ConfigTable, NumbersFormatShortAndExact) {
  EXPECT_EQ(format_config_number(1e-6), "1e-06");
  EXPECT_EQ(format_config_number(0.3), "0.3");
  EXPECT_EQ(format_config_number(10000), "10000.0");
  EXPECT_EQ(format_config_number(2.5), "2.5");
  EXPECT_EQ(format_config_number(-3), "-3.0");
  EXPECT_EQ(format_config_number(6.02214076e23), "6.02214076e+23");
  for (double v : {0.1 + 0.2, 1.0 / 3.0, 6.02214076e23, 1e-300, -0.75, 1e16, 123456789.0})
    EXPECT_EQ(std::stod(format_config_number(v)), v) << format_config_number(v);
}

// ---- JSON ----

TEST(ConfigJson, EveryFieldWithItsJsonType) {
  ModelConfig c;
  const nlohmann::json j = to_json(c);
  EXPECT_EQ(j.size(), model_config_fields().size());
  EXPECT_TRUE(j.at("hidden_size").is_number_integer());
  EXPECT_TRUE(j.at("rms_norm_eps").is_number_float());
  EXPECT_TRUE(j.at("tie_word_embeddings").is_boolean());
  EXPECT_EQ(j.at("attention"), "mla");
  EXPECT_EQ(j.at("ffn"), "moe");
  EXPECT_EQ(j.at("scoring_func"), "sigmoid");
}

TEST(ConfigJson, RoundTrip) {
  ModelConfig c;
  c.attention = AttentionKind::GQA;
  c.num_key_value_heads = 2;
  c.ffn = FfnKind::Dense;
  c.scoring_func = ScoreFunc::Softmax;
  c.tie_word_embeddings = true;
  c.rms_norm_eps = 1.0 / 3.0;
  c.vocab_size = 102400;
  c.capacity_factor = 1.25;
  EXPECT_EQ(model_config_from_json(to_json(c)), c);
  EXPECT_EQ(model_config_from_json(nlohmann::json::parse(to_json(c).dump())), c);  // through text
  EXPECT_EQ(model_config_from_json(to_json(ModelConfig{})), ModelConfig{});
}

TEST(ConfigJson, MissingKeysKeepTheDefaults) {
  const ModelConfig c = model_config_from_json({{"hidden_size", 96}, {"attention", "mha"}});
  ModelConfig expected;
  expected.hidden_size = 96;
  expected.attention = AttentionKind::MHA;
  EXPECT_EQ(c, expected);
  EXPECT_EQ(model_config_from_json(nlohmann::json::object()), ModelConfig{});
}

TEST(ConfigJson, UnknownKeysAndWrongTypesAreErrors) {
  using nlohmann::json;
  EXPECT_EQ(config_error([] {
              model_config_from_json({{"hiden_size", 64}});
            }),
            "config: unknown key 'hiden_size' (did you mean 'hidden_size'?)");
  EXPECT_EQ(config_error([] {
              model_config_from_json({{"hidden_size", "64"}});
            }),
            "config: hidden_size = \"64\" is not an integer");
  EXPECT_EQ(config_error([] {
              model_config_from_json({{"hidden_size", 64.5}});
            }),
            "config: hidden_size = 64.5 is not an integer");
  EXPECT_EQ(config_error([] {
              model_config_from_json({{"rope_theta", "1e4"}});
            }),
            "config: rope_theta = \"1e4\" is not a number");
  EXPECT_EQ(config_error([] {
              model_config_from_json({{"norm_topk_prob", 1}});
            }),
            "config: norm_topk_prob = 1 is not a bool (true or false)");
  EXPECT_TRUE(names_all(config_error([] { model_config_from_json({{"attention", 1}}); }), {"attention = 1", "string"}));
  EXPECT_TRUE(names_all(config_error([] {
                          model_config_from_json({{"attention", "mqa"}});
                        }),
                        {"attention = 'mqa'", "mla, mha, gqa"}));
  EXPECT_TRUE(names_all(config_error([] { model_config_from_json(json::array()); }), {"JSON object"}));
  // A rope_theta read from JSON as an integer is still a number.
  EXPECT_EQ(model_config_from_json({{"rope_theta", 500000}}).rope_theta, 500000.0);
}

// ---- validate(): every rule ----

struct Rule {
  const char* name;
  std::function<void(ModelConfig&)> set;
  std::vector<std::string> message;  // substrings: the key with its value, the rule
};

std::vector<Rule> rules() {
  return {
      {"vocab_size", [](ModelConfig& c) { c.vocab_size = 0; }, {"vocab_size = 0", "must be > 0"}},
      {"vocab_int32", [](ModelConfig& c) { c.vocab_size = int64_t{1} << 31; }, {"vocab_size = 2147483648", "int32"}},
      {"hidden_size", [](ModelConfig& c) { c.hidden_size = -1; }, {"hidden_size = -1", "must be > 0"}},
      {"layers", [](ModelConfig& c) { c.num_hidden_layers = 0; }, {"num_hidden_layers = 0", "must be > 0"}},
      {"positions", [](ModelConfig& c) { c.max_position_embeddings = 0; }, {"max_position_embeddings = 0", "> 0"}},
      {"heads", [](ModelConfig& c) { c.num_attention_heads = 0; }, {"num_attention_heads = 0", "must be > 0"}},
      {"eps", [](ModelConfig& c) { c.rms_norm_eps = 0; }, {"rms_norm_eps = 0", "must be in (0, 1)"}},
      {"theta", [](ModelConfig& c) { c.rope_theta = 1; }, {"rope_theta = 1", "must be > 1"}},
      {"init", [](ModelConfig& c) { c.initializer_range = -0.02; }, {"initializer_range = -0.02", "must be > 0"}},
      // MLA
      {"q_lora_rank", [](ModelConfig& c) { c.q_lora_rank = -1; }, {"q_lora_rank = -1", "must be >= 0"}},
      {"kv_lora_rank", [](ModelConfig& c) { c.kv_lora_rank = 0; }, {"kv_lora_rank = 0", "must be > 0"}},
      {"nope", [](ModelConfig& c) { c.qk_nope_head_dim = 0; }, {"qk_nope_head_dim = 0", "must be > 0"}},
      {"rope0", [](ModelConfig& c) { c.qk_rope_head_dim = 0; }, {"qk_rope_head_dim = 0", "must be > 0"}},
      {"odd_rope", [](ModelConfig& c) { c.qk_rope_head_dim = 7; }, {"qk_rope_head_dim = 7", "must be even"}},
      {"v_head_dim", [](ModelConfig& c) { c.v_head_dim = 0; }, {"v_head_dim = 0", "must be > 0"}},
      // MHA / GQA
      {"heads_divide",
       [](ModelConfig& c) {
         c.attention = AttentionKind::MHA;
         c.num_attention_heads = 6;
       },
       {"num_attention_heads = 6", "does not divide hidden_size = 64"}},
      {"rotary",
       [](ModelConfig& c) {
         c.attention = AttentionKind::MHA;
         c.partial_rotary_factor = 1.5;
       },
       {"partial_rotary_factor = 1.5", "must be in [0, 1]"}},
      {"kv_heads_divide",
       [](ModelConfig& c) {
         c.attention = AttentionKind::GQA;
         c.num_key_value_heads = 3;
       },
       {"num_key_value_heads = 3", "does not divide num_attention_heads = 4"}},
      {"kv_heads_positive",
       [](ModelConfig& c) {
         c.attention = AttentionKind::GQA;
         c.num_key_value_heads = 0;
       },
       {"num_key_value_heads = 0", "must be > 0"}},
      // FFN / MoE
      {"intermediate", [](ModelConfig& c) { c.intermediate_size = 0; }, {"intermediate_size = 0", "must be > 0"}},
      {"first_k_dense",
       [](ModelConfig& c) { c.first_k_dense_replace = 3; },
       {"first_k_dense_replace = 3", "must be in [0, num_hidden_layers = 2]"}},
      {"expert_width", [](ModelConfig& c) { c.moe_intermediate_size = 0; }, {"moe_intermediate_size = 0", "> 0"}},
      {"experts", [](ModelConfig& c) { c.n_routed_experts = 0; }, {"n_routed_experts = 0", "must be > 0"}},
      {"shared", [](ModelConfig& c) { c.n_shared_experts = -1; }, {"n_shared_experts = -1", "must be >= 0"}},
      {"top_k0", [](ModelConfig& c) { c.num_experts_per_tok = 0; }, {"num_experts_per_tok = 0", "must be > 0"}},
      {"top_k",
       [](ModelConfig& c) { c.num_experts_per_tok = 9; },
       {"num_experts_per_tok = 9", "exceeds n_routed_experts = 8"}},
      {"n_group0", [](ModelConfig& c) { c.n_group = 0; }, {"n_group = 0", "must be > 0"}},
      {"n_group", [](ModelConfig& c) { c.n_group = 3; }, {"n_group = 3", "does not divide n_routed_experts = 8"}},
      {"topk_group0", [](ModelConfig& c) { c.topk_group = 0; }, {"topk_group = 0", "must be > 0"}},
      {"topk_group",
       [](ModelConfig& c) {
         c.n_group = 2;
         c.topk_group = 3;
       },
       {"topk_group = 3", "exceeds n_group = 2"}},
      {"groups_hold_k",
       [](ModelConfig& c) {
         c.n_group = 4;
         c.topk_group = 1;
         c.num_experts_per_tok = 3;
       },
       {"topk_group = 1", "groups of 2", "fewer than num_experts_per_tok = 3"}},
      {"group_of_one",
       [](ModelConfig& c) {
         c.n_group = 8;
         c.topk_group = 2;
       },
       {"n_group = 8", "leaves 1 expert per group", "top-2"}},
      // node-limited routing (the defaults: 8 experts, K = 2)
      {"max_nodes_negative",
       [](ModelConfig& c) { c.max_nodes_per_token = -1; },
       {"max_nodes_per_token = -1", "must be >= 0"}},
      {"expert_nodes0", [](ModelConfig& c) { c.expert_nodes = 0; }, {"expert_nodes = 0", "must be >= 1"}},
      {"expert_nodes_divide",
       [](ModelConfig& c) { c.expert_nodes = 3; },
       {"expert_nodes = 3", "does not divide n_routed_experts = 8"}},
      {"node_limit_with_groups",
       [](ModelConfig& c) {
         c.n_group = 2;
         c.topk_group = 1;
         c.max_nodes_per_token = 1;
         c.expert_nodes = 4;
       },
       {"max_nodes_per_token = 1", "expert_nodes = 4", "n_group = 2", "set n_group = 1"}},
      {"node_smaller_than_its_score",
       [](ModelConfig& c) {
         c.max_nodes_per_token = 1;
         c.expert_nodes = 8;
       },
       {"max_nodes_per_token = 1", "expert_nodes = 8", "ceil(num_experts_per_tok / max_nodes_per_token) = 2",
        "n_routed_experts / expert_nodes = 1"}},
      {"scaling", [](ModelConfig& c) { c.routed_scaling_factor = 0; }, {"routed_scaling_factor = 0", "must be > 0"}},
      {"capacity", [](ModelConfig& c) { c.capacity_factor = -1; }, {"capacity_factor = -1", "must be >= 0"}},
      {"gamma", [](ModelConfig& c) { c.bias_update_speed = -0.1; }, {"bias_update_speed = -0.1", "must be >= 0"}},
      {"seq_aux", [](ModelConfig& c) { c.seq_aux_loss_alpha = -1; }, {"seq_aux_loss_alpha = -1", ">= 0"}},
      {"aux", [](ModelConfig& c) { c.aux_loss_alpha = -1; }, {"aux_loss_alpha = -1", "must be >= 0"}},
      {"z", [](ModelConfig& c) { c.router_z_loss_coef = -1; }, {"router_z_loss_coef = -1", "must be >= 0"}},
      // MTP
      {"mtp", [](ModelConfig& c) { c.num_nextn_predict_layers = -1; }, {"num_nextn_predict_layers = -1", ">= 0"}},
      {"mtp_weight", [](ModelConfig& c) { c.mtp_loss_weight = -0.5; }, {"mtp_loss_weight = -0.5", "must be >= 0"}},
  };
}

TEST(ConfigValidate, DefaultsAreValid) { EXPECT_NO_THROW(ModelConfig{}.validate()); }

TEST(ConfigValidate, EveryRuleNamesKeyValueAndRule) {
  for (const Rule& r : rules()) {
    ModelConfig c;
    r.set(c);
    const std::string msg = config_error([&] { c.validate(); });
    EXPECT_TRUE(names_all(msg, r.message)) << "rule " << r.name;
    EXPECT_EQ(msg.rfind("config: ", 0), 0u) << msg;
  }
}

TEST(ConfigValidate, NodeLimitedRouting) {
  ModelConfig c;  // 8 experts, K = 2
  c.max_nodes_per_token = 2;
  c.expert_nodes = 4;
  EXPECT_NO_THROW(c.validate());
  EXPECT_TRUE(c.node_limited());
  EXPECT_EQ(c.node_score_topk(), 1);
  c.num_experts_per_tok = 4;  // ceil(4 / 2) = 2 <= the 2 experts of a node
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(c.node_score_topk(), 2);
  c.num_experts_per_tok = 5;  // ceil(5 / 2) = 3 > 2
  EXPECT_TRUE(names_all(config_error([&] { c.validate(); }),
                        {"max_nodes_per_token = 2", "expert_nodes = 4", "= 3 experts",
                         "n_routed_experts / expert_nodes = 2"}));
  // The limit holds nothing back when the experts span no more nodes than it: groups may stay.
  c = ModelConfig{};
  c.max_nodes_per_token = 4;
  c.expert_nodes = 4;
  c.n_group = 2;
  c.topk_group = 1;
  EXPECT_NO_THROW(c.validate());
  EXPECT_FALSE(c.node_limited());
  // 0 = unlimited, whatever the layout.
  c = ModelConfig{};
  c.expert_nodes = 8;
  c.n_group = 4;
  c.topk_group = 2;
  EXPECT_NO_THROW(c.validate());
  EXPECT_FALSE(c.node_limited());
}

TEST(ConfigTable, NodeLimitedRoutingKeysAreSavedWithTheModel) {
  // Both shape the routing, so a checkpoint or an export routes as the run did.
  ModelConfig c;
  EXPECT_EQ(get_config_key(c, "max_nodes_per_token"), "0");
  EXPECT_EQ(get_config_key(c, "expert_nodes"), "1");
  set_config_key(c, "max_nodes_per_token", "2");
  set_config_key(c, "expert_nodes", "4");
  EXPECT_EQ(c.max_nodes_per_token, 2);
  EXPECT_EQ(c.expert_nodes, 4);
  EXPECT_EQ(to_json(c).at("max_nodes_per_token"), 2);
  EXPECT_EQ(model_config_from_json(to_json(c)), c);
}

TEST(ConfigValidate, RulesOfTheUnusedPartAreSkipped) {
  // MLA's dims do not matter to MHA, and the MoE keys not to a dense model.
  ModelConfig c;
  c.attention = AttentionKind::MHA;
  c.qk_rope_head_dim = 7;
  c.ffn = FfnKind::Dense;
  c.num_experts_per_tok = 99;
  EXPECT_NO_THROW(c.validate());
}

TEST(ConfigValidate, NonFiniteNumbersAreRejected) {
  ModelConfig c;
  c.routed_scaling_factor = std::numeric_limits<double>::infinity();
  EXPECT_TRUE(names_all(config_error([&] { c.validate(); }), {"routed_scaling_factor = inf", "finite"}));
  c = ModelConfig{};
  c.rms_norm_eps = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(names_all(config_error([&] { c.validate(); }), {"rms_norm_eps = nan"}));
  c = ModelConfig{};
  c.capacity_factor = std::numeric_limits<double>::infinity();
  EXPECT_TRUE(names_all(config_error([&] { c.validate(); }), {"capacity_factor = inf"}));
}

}  // namespace
}  // namespace moelab
