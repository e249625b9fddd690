// `moelab export` (train/export.h): a tiny random model is saved as a checkpoint, exported, and the
// Hugging Face directory read back: every tensor of model.safetensors has the model's name, shape
// and value (bf16: the round-to-nearest-even value; the router bias stays f32), config.json has
// every HF key with the model's values and, with its "moelab" object, gives back the exact config;
// tokenizer.json is the checkpoint's tokenizer, tokenizer_config.json makes AutoTokenizer run it as it is;
// tied embeddings have no lm_head; MTP modules are the layers after the last; unsupported configs
// are refused or warned about; a damaged checkpoint or a refused export leaves no output directory.
// tests/train/check_hf_export.py checks the same files with the Python `safetensors` package.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "../harness.h"
#include "core/safetensors.h"
#include "train/checkpoint.h"
#include "train/export.h"

namespace moelab {
namespace {

namespace fs = std::filesystem;
using testing::expect_error;

// A fresh directory per test (ctest runs tests as parallel processes: the pid keeps them apart).
class ExportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    root_ = fs::path(::testing::TempDir()) / ("moelab_export_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(root_);
    fs::create_directories(root_);
  }
  void TearDown() override { fs::remove_all(root_); }

  // A small MoE model with every kind of tensor: query compression, a dense first layer, a routed
  // MoE layer with shared expert and aux-loss-free bias, one MTP module, an untied head.
  static ModelConfig moe_config() {
    ModelConfig c;
    c.vocab_size = 64;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.q_lora_rank = 16;
    c.kv_lora_rank = 16;
    c.qk_nope_head_dim = 8;
    c.qk_rope_head_dim = 4;
    c.v_head_dim = 8;
    c.intermediate_size = 48;
    c.first_k_dense_replace = 1;
    c.moe_intermediate_size = 16;
    c.n_routed_experts = 4;
    c.num_experts_per_tok = 2;
    c.n_group = 2;
    c.topk_group = 1;
    c.routed_scaling_factor = 2.5;
    c.num_nextn_predict_layers = 1;
    c.seq_aux_loss_alpha = 1e-4;
    return c;
  }

  // Saves a random model (random router biases too, so that they are not all zeros) as step 42.
  std::string checkpoint(const ModelConfig& c, bool with_tokenizer = true, const std::string& run = "run") {
    RunConfig rc;
    rc.model = c;
    rc.train.seq_len = std::min<int64_t>(rc.train.seq_len, c.max_position_embeddings);
    Model model(c);
    model.allocate(Device::CPU);
    model.initialize(7);
    std::mt19937 gen(11);
    std::normal_distribution<float> normal(0.0f, 0.01f);
    for (const auto& e : model.buffers().entries()) {
      Tensor b = model.buffers().param(e.spec.name);
      for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] = normal(gen);
    }
    const Tokenizer tok = Tokenizer::build_char("First Citizen:\nBefore we proceed any further, hear me speak.",
                                                {kEndOfText});
    TrainerState st;
    st.step = 42;
    st.seed = 3;
    return save_checkpoint((root_ / run).string(), rc, model, nullptr, with_tokenizer ? &tok : nullptr, st, 0);
  }

  static nlohmann::json read_json(const fs::path& p) {
    std::ifstream in(p);
    EXPECT_TRUE(in) << p;
    return nlohmann::json::parse(in);
  }

  fs::path root_;
};

// The model's tensors by name (parameters and buffers), as the checkpoint loaded them.
std::map<std::string, Tensor> model_tensors(const Model& m) {
  std::map<std::string, Tensor> t;
  for (const auto& e : m.params().entries()) t[e.spec.name] = m.params().param(e.spec.name);
  for (const auto& e : m.buffers().entries()) t[e.spec.name] = m.buffers().param(e.spec.name);
  return t;
}

bool ends_with(const std::string& name, const std::string& s) {
  return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
}

bool is_router_bias(const std::string& name) { return ends_with(name, ".mlp.gate.e_score_correction_bias"); }

// The trunk tensor an MTP module's copy repeats (DeepSeek-V3's release layout), or "" for others.
std::string mtp_copy_source(const std::string& name, const ModelConfig& c) {
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const std::string module = "model.layers." + std::to_string(c.num_hidden_layers + k);
    if (name == module + ".embed_tokens.weight") return "model.embed_tokens.weight";
    if (name == module + ".shared_head.head.weight")
      return c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
  }
  return "";
}

// Every exported tensor equals the model's: bit for bit in f32, the rounded value in bf16 (router
// biases always f32); each MTP module carries copies of the embedding and the head. Returns the
// exported names.
std::set<std::string> expect_tensors_match(const Safetensors& st, const Model& model, DType dtype) {
  const auto ref = model_tensors(model);
  std::set<std::string> names;
  for (const auto& [name, t] : st.tensors) {
    SCOPED_TRACE(name);
    names.insert(name);
    const DType want = is_router_bias(name) ? DType::F32 : dtype;
    EXPECT_EQ(t.dtype(), want);
    const std::string source = mtp_copy_source(name, model.config());
    const auto it = ref.find(source.empty() ? name : source);
    if (it == ref.end()) {  // only a zero router bias may be added (a run without aux_free_bias)
      EXPECT_TRUE(is_router_bias(name) && !model.config().aux_free_bias) << "unexpected tensor";
      for (int64_t i = 0; i < t.numel(); ++i) EXPECT_EQ(t.data<float>()[i], 0.0f);
      continue;
    }
    const Tensor& r = it->second;
    EXPECT_EQ(t.shape(), r.shape());
    if (t.shape() != r.shape()) continue;
    const float* rv = r.data<float>();
    int64_t bad = 0, far = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (want == DType::F32) {
        bad += std::memcmp(&t.data<float>()[i], &rv[i], 4) != 0;
      } else {
        const uint16_t bits = t.data<bf16_t>()[i].bits;
        bad += bits != float_to_bf16_bits(rv[i]);
        // and, independently of moelab's rounding, within half a bf16 ulp (8 significant bits:
        // at most 2^-8 relative)
        far += std::fabs(bf16_bits_to_float(bits) - rv[i]) > std::fabs(rv[i]) * 0x1p-8f;
      }
    }
    EXPECT_EQ(bad, 0) << "elements differ";
    EXPECT_EQ(far, 0) << "bf16 elements farther than half an ulp";
  }
  for (const auto& [name, t] : ref) EXPECT_TRUE(names.count(name)) << name << " is missing from the export";
  const ModelConfig& c = model.config();
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k)
    for (const char* part : {".embed_tokens.weight", ".shared_head.head.weight"}) {
      const std::string n = "model.layers." + std::to_string(c.num_hidden_layers + k) + part;
      EXPECT_TRUE(names.count(n)) << n << ": the MTP module's copy is missing";
    }
  return names;
}

TEST_F(ExportTest, MoeF32TensorsConfigTokenizerGeneration) {
  const ModelConfig c = moe_config();
  const LoadedCheckpoint ck = load_checkpoint(checkpoint(c));
  const fs::path out = root_ / "hf";
  const ExportSummary s = export_hf(ck, out.string(), DType::F32);
  EXPECT_EQ(s.out_dir, out.string());
  EXPECT_EQ(s.step, 42);
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
  EXPECT_TRUE(s.warnings.empty()) << s.warnings.front();

  const Safetensors st = read_safetensors((out / "model.safetensors").string());
  EXPECT_EQ(st.metadata.at("format"), "pt");
  const std::set<std::string> names = expect_tensors_match(st, *ck.model, DType::F32);
  EXPECT_EQ(s.tensors, static_cast<int64_t>(names.size()));
  EXPECT_EQ(s.bytes, fs::file_size(out / "model.safetensors"));
  // HF's names: MLA with query compression, the MoE of layer 1, the MTP module as layer 2, the head.
  for (const char* n : {"model.embed_tokens.weight", "model.layers.0.self_attn.q_a_proj.weight",
                        "model.layers.0.self_attn.q_a_layernorm.weight", "model.layers.0.self_attn.q_b_proj.weight",
                        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "model.layers.0.mlp.gate_proj.weight",
                        "model.layers.1.mlp.experts.3.down_proj.weight", "model.layers.1.mlp.gate.weight",
                        "model.layers.1.mlp.gate.e_score_correction_bias",
                        "model.layers.1.mlp.shared_experts.up_proj.weight", "model.layers.2.enorm.weight",
                        "model.layers.2.hnorm.weight", "model.layers.2.eh_proj.weight",
                        "model.layers.2.shared_head.norm.weight", "model.layers.2.mlp.gate.e_score_correction_bias",
                        "model.norm.weight", "lm_head.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  for (const auto& n : names) EXPECT_NE(n.rfind("model.layers.3.", 0), 0u) << n << ": one MTP module only";
  // Each router bias follows its gate weight, as in HF's state_dict.
  for (size_t i = 1; i < st.tensors.size(); ++i) {
    const std::string& name = st.tensors[i].first;
    if (is_router_bias(name)) {
      EXPECT_EQ(st.tensors[i - 1].first, name.substr(0, name.rfind('.') + 1) + "weight");
    }
  }

  const nlohmann::json j = read_json(out / "config.json");
  EXPECT_EQ(j["model_type"], "deepseek_v3");
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"DeepseekV3ForCausalLM"}));
  EXPECT_EQ(j["torch_dtype"], "float32");
  for (const auto& k : hf_config_keys()) EXPECT_TRUE(j.contains(k)) << k;
  const int32_t eot = ck.tokenizer->eot_id();
  ASSERT_GE(eot, 0);
  EXPECT_EQ(j["bos_token_id"], eot);
  EXPECT_EQ(j["eos_token_id"], eot);
  EXPECT_EQ(j["vocab_size"], 64);
  EXPECT_EQ(j["hidden_size"], 32);
  EXPECT_EQ(j["num_hidden_layers"], 2);
  EXPECT_EQ(j["num_nextn_predict_layers"], 1);
  EXPECT_EQ(j["num_attention_heads"], 2);
  EXPECT_EQ(j["num_key_value_heads"], 2);
  EXPECT_EQ(j["q_lora_rank"], 16);
  EXPECT_EQ(j["kv_lora_rank"], 16);
  EXPECT_EQ(j["qk_nope_head_dim"], 8);
  EXPECT_EQ(j["qk_rope_head_dim"], 4);
  EXPECT_EQ(j["v_head_dim"], 8);
  EXPECT_EQ(j["intermediate_size"], 48);
  EXPECT_EQ(j["moe_intermediate_size"], 16);
  EXPECT_EQ(j["first_k_dense_replace"], 1);
  EXPECT_EQ(j["n_routed_experts"], 4);
  EXPECT_EQ(j["n_shared_experts"], 1);
  EXPECT_EQ(j["num_experts_per_tok"], 2);
  EXPECT_EQ(j["n_group"], 2);
  EXPECT_EQ(j["topk_group"], 1);
  EXPECT_EQ(j["topk_method"], "noaux_tc");
  EXPECT_EQ(j["scoring_func"], "sigmoid");
  EXPECT_EQ(j["norm_topk_prob"], true);
  EXPECT_EQ(j["routed_scaling_factor"], 2.5);
  EXPECT_EQ(j["seq_aux"], true);
  EXPECT_EQ(j["aux_loss_alpha"], 1e-4);
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["rms_norm_eps"], 1e-6);
  EXPECT_EQ(j["rope_theta"], 10000.0);
  EXPECT_TRUE(j["rope_scaling"].is_null());
  EXPECT_EQ(j["rope_interleave"], true);
  EXPECT_EQ(j["attention_bias"], false);
  EXPECT_EQ(j["attention_dropout"], 0.0);
  EXPECT_EQ(j["tie_word_embeddings"], false);
  EXPECT_EQ(j["use_cache"], true);
  EXPECT_EQ(j["max_position_embeddings"], 256);
  EXPECT_EQ(j["initializer_range"], 0.02);
  // moelab's own switches, kept.
  const nlohmann::json& own = j["moelab"];
  EXPECT_EQ(own["attention"], "mla");
  EXPECT_EQ(own["ffn"], "moe");
  EXPECT_EQ(own["capacity_factor"], 0.0);
  EXPECT_EQ(own["aux_free_bias"], true);
  EXPECT_EQ(own["bias_update_speed"], 0.001);
  EXPECT_EQ(own["seq_aux_loss_alpha"], 1e-4);
  EXPECT_EQ(own["mtp_loss_weight"], 0.3);
  EXPECT_EQ(own["partial_rotary_factor"], 1.0);

  const Tokenizer tok = Tokenizer::load((out / "tokenizer.json").string());
  EXPECT_EQ(tok.vocab_size(), ck.tokenizer->vocab_size());
  EXPECT_EQ(tok.encode("hear me"), ck.tokenizer->encode("hear me"));
  const nlohmann::json tc = read_json(out / "tokenizer_config.json");
  EXPECT_EQ(tc["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_EQ(tc["eos_token"], kEndOfText);
  EXPECT_EQ(tc["model_max_length"], 256);
  EXPECT_EQ(s.files, (std::vector<std::string>{"model.safetensors", "config.json", "generation_config.json",
                                               "tokenizer.json", "tokenizer_config.json"}));
  const nlohmann::json g = read_json(out / "generation_config.json");
  EXPECT_EQ(g["eos_token_id"], eot);
  EXPECT_EQ(g["do_sample"], true);
  EXPECT_EQ(g["temperature"], 1.0);
}

// The HF keys overlaid with the "moelab" object give back the exact ModelConfig, whatever the
// switches (nothing is lost).
TEST_F(ExportTest, ConfigRoundTripsThroughHfKeysAndMoelabObject) {
  std::vector<ModelConfig> configs;
  configs.push_back(moe_config());
  ModelConfig a = moe_config();
  a.q_lora_rank = 0;
  a.tie_word_embeddings = true;
  a.aux_free_bias = false;
  a.seq_aux_loss_alpha = 0;
  a.aux_loss_alpha = 0.01;
  a.router_z_loss_coef = 1e-3;
  a.scoring_func = ScoreFunc::Softmax;
  a.capacity_factor = 1.25;
  configs.push_back(a);
  ModelConfig d;
  d.ffn = FfnKind::Dense;
  d.first_k_dense_replace = 0;
  configs.push_back(d);
  ModelConfig g;
  g.attention = AttentionKind::GQA;
  g.num_key_value_heads = 2;
  g.partial_rotary_factor = 0.5;
  configs.push_back(g);
  for (const ModelConfig& c : configs) {
    const nlohmann::json j = hf_config_json(c, DType::BF16, -1);
    EXPECT_TRUE(j["bos_token_id"].is_null());
    EXPECT_EQ(j["torch_dtype"], "bfloat16");
    nlohmann::json merged = nlohmann::json::object();
    for (const auto& f : model_config_fields())
      merged[f.name] = j["moelab"].contains(f.name) ? j["moelab"][f.name] : j[f.name];
    EXPECT_EQ(model_config_from_json(merged), c) << j.dump(1);
  }
}

TEST_F(ExportTest, Bf16RoundsWeightsAndKeepsTheRouterBiasF32) {
  const LoadedCheckpoint ck = load_checkpoint(checkpoint(moe_config()));
  const fs::path out = root_ / "hf_bf16";
  const ExportSummary s = export_hf(ck, out.string(), DType::BF16);
  EXPECT_EQ(s.dtype, DType::BF16);
  const Safetensors st = read_safetensors((out / "model.safetensors").string());
  expect_tensors_match(st, *ck.model, DType::BF16);
  EXPECT_EQ(st.at("model.layers.1.mlp.gate.e_score_correction_bias").dtype(), DType::F32);
  EXPECT_EQ(st.at("model.layers.1.mlp.gate.weight").dtype(), DType::BF16);
  EXPECT_EQ(read_json(out / "config.json")["torch_dtype"], "bfloat16");
}

TEST_F(ExportTest, TiedNoQueryCompressionTwoMtpModules) {
  ModelConfig c = moe_config();
  c.tie_word_embeddings = true;
  c.q_lora_rank = 0;
  c.num_nextn_predict_layers = 2;
  const LoadedCheckpoint ck = load_checkpoint(checkpoint(c));
  const fs::path out = root_ / "hf";
  const ExportSummary s = export_hf(ck, out.string(), DType::F32);
  const Safetensors st = read_safetensors((out / "model.safetensors").string());
  const std::set<std::string> names = expect_tensors_match(st, *ck.model, DType::F32);
  EXPECT_FALSE(names.count("lm_head.weight")) << "HF ties lm_head to the embedding itself";
  EXPECT_TRUE(names.count("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(names.count("model.layers.0.self_attn.q_a_proj.weight"));
  for (const char* n : {"model.layers.2.eh_proj.weight", "model.layers.3.eh_proj.weight",
                        "model.layers.3.shared_head.norm.weight", "model.layers.3.mlp.experts.0.gate_proj.weight"})
    EXPECT_TRUE(names.count(n)) << n;
  const nlohmann::json j = read_json(out / "config.json");
  EXPECT_TRUE(j["q_lora_rank"].is_null());
  EXPECT_EQ(j["tie_word_embeddings"], true);
  EXPECT_EQ(j["num_nextn_predict_layers"], 2);
  EXPECT_EQ(j["moelab"]["q_lora_rank"], 0);
  bool mtp_note = false;
  for (const auto& n : s.notes) mtp_note |= n.find("model.layers.2.*") != std::string::npos;
  EXPECT_TRUE(mtp_note);
}

TEST_F(ExportTest, DenseModelIsAllDenseLayers) {
  ModelConfig c = moe_config();
  c.ffn = FfnKind::Dense;
  const LoadedCheckpoint ck = load_checkpoint(checkpoint(c));
  const fs::path out = root_ / "hf";
  export_hf(ck, out.string(), DType::F32);
  const std::set<std::string> names =
      expect_tensors_match(read_safetensors((out / "model.safetensors").string()), *ck.model, DType::F32);
  for (const auto& n : names) EXPECT_EQ(n.find(".mlp.gate."), std::string::npos) << n;
  EXPECT_TRUE(names.count("model.layers.1.mlp.up_proj.weight"));
  EXPECT_EQ(read_json(out / "config.json")["first_k_dense_replace"], c.num_hidden_layers);
}

TEST_F(ExportTest, NoAuxFreeBiasWritesZeroBiasesAndWarnsAboutGroups) {
  ModelConfig c = moe_config();
  c.aux_free_bias = false;  // n_group = 2: moelab's groups score their best expert, HF's the top-2 sum
  const LoadedCheckpoint ck = load_checkpoint(checkpoint(c));
  const fs::path out = root_ / "hf";
  const ExportSummary s = export_hf(ck, out.string(), DType::BF16);
  const Safetensors st = read_safetensors((out / "model.safetensors").string());
  const std::set<std::string> names = expect_tensors_match(st, *ck.model, DType::BF16);
  EXPECT_TRUE(names.count("model.layers.1.mlp.gate.e_score_correction_bias"));
  EXPECT_TRUE(names.count("model.layers.2.mlp.gate.e_score_correction_bias"));
  ASSERT_EQ(s.warnings.size(), 1u);
  EXPECT_NE(s.warnings[0].find("aux_free_bias = false with n_group = 2"), std::string::npos) << s.warnings[0];
  EXPECT_EQ(read_json(out / "config.json")["topk_method"], "group_limited_greedy");
  EXPECT_EQ(hf_config_json([] { ModelConfig x; x.aux_free_bias = false; return x; }(), DType::F32, -1)["topk_method"],
            "greedy");
}

TEST_F(ExportTest, WarnsAboutWhatHfComputesDifferently) {
  ModelConfig c = moe_config();
  c.scoring_func = ScoreFunc::Softmax;
  c.capacity_factor = 1.5;
  const HfExportIssues issues = hf_export_issues(c);
  EXPECT_TRUE(issues.refusals.empty());
  ASSERT_EQ(issues.warnings.size(), 2u);
  EXPECT_NE(issues.warnings[0].find("scoring_func = softmax"), std::string::npos) << issues.warnings[0];
  EXPECT_NE(issues.warnings[1].find("capacity_factor = 1.5"), std::string::npos) << issues.warnings[1];
  // No MoE layer in HF's model: the router keys do not matter to it.
  c.first_k_dense_replace = c.num_hidden_layers;
  EXPECT_TRUE(hf_export_issues(c).warnings.empty());
  // HF's MLA latent norms keep eps 1e-6 whatever config.json says.
  c.rms_norm_eps = 1e-5;
  const HfExportIssues eps = hf_export_issues(c);
  ASSERT_EQ(eps.warnings.size(), 1u);
  EXPECT_NE(eps.warnings[0].find("rms_norm_eps = 1e-05: HF's DeepseekV3 builds"), std::string::npos) << eps.warnings[0];
}

TEST_F(ExportTest, MhaAndGqaAreRefusedUnlessForced) {
  for (AttentionKind kind : {AttentionKind::MHA, AttentionKind::GQA}) {
    ModelConfig c = moe_config();
    c.attention = kind;
    c.num_key_value_heads = 1;
    const LoadedCheckpoint ck = load_checkpoint(checkpoint(c, true, attention_kind_name(kind)));
    const fs::path out = root_ / (std::string("hf_") + attention_kind_name(kind));
    expect_error([&] { export_hf(ck, out.string(), DType::F32); },
                 std::string("attention = ") + attention_kind_name(kind) +
                     ": Hugging Face's DeepseekV3ForCausalLM has only MLA attention");
    EXPECT_FALSE(fs::exists(out));
    EXPECT_FALSE(fs::exists(out.string() + ".tmp"));

    ExportOptions opt;
    opt.force = true;
    const ExportSummary s = export_hf(ck, out.string(), opt);
    ASSERT_FALSE(s.warnings.empty());
    EXPECT_NE(s.warnings[0].find("--force"), std::string::npos) << s.warnings[0];
    const std::set<std::string> names =
        expect_tensors_match(read_safetensors((out / "model.safetensors").string()), *ck.model, DType::F32);
    EXPECT_TRUE(names.count("model.layers.0.self_attn.k_proj.weight"));
    const nlohmann::json j = read_json(out / "config.json");
    EXPECT_EQ(j["moelab"]["attention"], attention_kind_name(kind));
    EXPECT_EQ(j["num_key_value_heads"], kind == AttentionKind::GQA ? 1 : 2);
  }
}

TEST_F(ExportTest, RunDirectoryResolvesToItsNewestCheckpoint) {
  const std::string ckpt = checkpoint(moe_config());
  EXPECT_EQ(resolve_checkpoint(ckpt), ckpt);
  EXPECT_EQ(resolve_checkpoint((root_ / "run").string()), ckpt);
  const ExportSummary s = export_checkpoint((root_ / "run").string(), (root_ / "hf/").string());
  EXPECT_EQ(s.checkpoint, ckpt);
  EXPECT_EQ(s.out_dir, (root_ / "hf").string());  // the trailing slash does not put the .tmp inside
  EXPECT_TRUE(fs::exists(root_ / "hf" / "config.json"));
  fs::create_directories(root_ / "empty");
  expect_error([&] { resolve_checkpoint((root_ / "empty").string()); },
               "neither a checkpoint (no trainer_state.json) nor a run directory");
  expect_error([&] { resolve_checkpoint((root_ / "nowhere").string()); }, "no such directory");
}

TEST_F(ExportTest, DamagedCheckpointLeavesNoOutput) {
  const std::string ckpt = checkpoint(moe_config());
  const fs::path model = fs::path(ckpt) / "model.safetensors";
  fs::resize_file(model, fs::file_size(model) - 100);
  const fs::path out = root_ / "hf";
  expect_error([&] { export_checkpoint(ckpt, out.string()); }, "damaged or truncated");
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
}

TEST_F(ExportTest, ExistingOutputNeedsOverwriteAndLeftoversAreCleared) {
  const LoadedCheckpoint ck = load_checkpoint(checkpoint(moe_config(), /*with_tokenizer=*/false));
  const fs::path out = root_ / "hf";
  fs::create_directories(out);
  { std::ofstream(out / "README.md") << "mine"; }
  fs::create_directories(out.string() + ".tmp");  // a crashed export's leftover
  { std::ofstream(out.string() + ".tmp/junk") << "x"; }
  expect_error([&] { export_hf(ck, out.string(), DType::F32); }, "exists and is not empty");
  EXPECT_TRUE(fs::exists(out / "README.md"));

  ExportOptions opt;
  opt.overwrite = true;
  const ExportSummary s = export_hf(ck, out.string(), opt);
  EXPECT_FALSE(fs::exists(out / "README.md"));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
  EXPECT_FALSE(fs::exists(out.string() + ".old"));
  // Without a tokenizer: no tokenizer.json, null bos/eos, and a note saying so.
  EXPECT_FALSE(fs::exists(out / "tokenizer.json"));
  EXPECT_FALSE(fs::exists(out / "tokenizer_config.json"));
  EXPECT_TRUE(read_json(out / "config.json")["eos_token_id"].is_null());
  EXPECT_EQ(s.files, (std::vector<std::string>{"model.safetensors", "config.json", "generation_config.json"}));
  bool note = false;
  for (const auto& n : s.notes) note |= n.find("no tokenizer") != std::string::npos;
  EXPECT_TRUE(note);
}

}  // namespace
}  // namespace moelab
