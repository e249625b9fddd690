// Hugging Face DeepSeek-V3 export: config.json, model.safetensors, tokenizer.json and
// generation_config.json of a checkpoint (train/export.h says what each holds and what HF's
// DeepseekV3ForCausalLM cannot represent).
#include "train/export.h"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/safetensors.h"

namespace moelab {

namespace fs = std::filesystem;

namespace {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kConfigFile = "config.json";
constexpr const char* kTokenizerFile = "tokenizer.json";
constexpr const char* kTokenizerConfigFile = "tokenizer_config.json";
constexpr const char* kGenerationFile = "generation_config.json";
constexpr const char* kBiasSuffix = ".mlp.gate.e_score_correction_bias";
constexpr const char* kGateSuffix = ".mlp.gate.weight";
constexpr const char* kMtpEmbedSuffix = ".embed_tokens.weight";  // model.layers.{L+k}.*: MTP copies
constexpr const char* kMtpHeadSuffix = ".shared_head.head.weight";

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Whether HF's model has MoE layers: the trunk's layers from first_k_dense_replace on (MTP modules
// are not built by HF, so their FFN does not matter to it).
bool hf_has_moe(const ModelConfig& c) {
  return c.ffn == FfnKind::MoE && c.first_k_dense_replace < c.num_hidden_layers;
}

std::string str(double v) { return format_config_number(v); }

// DeepSeek's topk_method: "noaux_tc" (V3: select with the bias, a group scores the sum of its top 2),
// "group_limited_greedy" (V2: a group scores its best expert), "greedy" (no groups).
const char* topk_method(const ModelConfig& c) {
  if (c.aux_free_bias) return "noaux_tc";
  return c.n_group > 1 ? "group_limited_greedy" : "greedy";
}

// Flushes a file or directory to disk, so that the rename that publishes the export never
// overtakes its contents after a crash (as checkpoints do).
void fsync_path(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_json(const fs::path& p, const nlohmann::json& j) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  MOELAB_CHECK(out, "export: cannot open ", p.string(), " for writing");
  out << j.dump(2) << "\n";
  out.flush();
  MOELAB_CHECK(out, "export: writing ", p.string(), " failed (disk full?)");
}

// "dir/" and "dir" name the same directory; its ".tmp" sibling must not land inside it.
fs::path normalized_out_dir(const std::string& out_dir) {
  MOELAB_CHECK(!out_dir.empty(), "export: the output directory is empty");
  fs::path p = fs::path(out_dir).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  const std::string name = p.filename().string();
  MOELAB_CHECK(!name.empty() && name != "." && name != "..", "export: output directory '", out_dir,
               "' needs a name of its own (its temporary sibling is <name>.tmp)");
  return p;
}

// The tensors of model.safetensors in HF's state_dict order: every parameter as declared, each
// router's e_score_correction_bias right after its gate weight (a zero one when the run had no
// aux-loss-free bias, because HF's router always adds it), then any other buffer.
std::vector<std::pair<std::string, Tensor>> hf_tensors(const Model& model, DType dtype) {
  auto on_cpu = [](const Tensor& t) { return t.device() == Device::CPU ? t : t.to(Device::CPU); };
  auto convert = [&](const Tensor& t, DType to) {
    const Tensor c = on_cpu(t);
    return c.dtype() == to ? c : c.to(to);
  };
  const ParamBuffer& buffers = model.buffers();
  std::vector<std::pair<std::string, Tensor>> out;
  std::set<std::string> written;
  for (const auto& e : model.params().entries()) {
    const std::string& name = e.spec.name;
    out.emplace_back(name, convert(model.params().param(name), dtype));
    if (!ends_with(name, kGateSuffix)) continue;
    const std::string bias = name.substr(0, name.size() - std::string(kGateSuffix).size()) + kBiasSuffix;
    const Tensor b = buffers.contains(bias) ? convert(buffers.param(bias), DType::F32)
                                            : Tensor::zeros({e.spec.shape[0]}, DType::F32);
    out.emplace_back(bias, b);
    written.insert(bias);
  }
  for (const auto& e : buffers.entries())
    if (!written.count(e.spec.name)) out.emplace_back(e.spec.name, convert(buffers.param(e.spec.name), DType::F32));
  // DeepSeek-V3's release stores in each MTP module copies of the two weights it shares with the
  // trunk, embed_tokens and shared_head.head (the LM head), so that a module loads on its own.
  // moelab trains one parameter for each: the copies are the same values.
  const ModelConfig& c = model.config();
  const Tensor embed = convert(model.params().param("model.embed_tokens.weight"), dtype);
  const Tensor head = c.tie_word_embeddings ? embed : convert(model.params().param("lm_head.weight"), dtype);
  for (int64_t k = 0; k < c.num_nextn_predict_layers; ++k) {
    const std::string module = "model.layers." + std::to_string(c.num_hidden_layers + k);
    out.emplace_back(module + kMtpEmbedSuffix, embed);
    out.emplace_back(module + kMtpHeadSuffix, head);
  }
  return out;
}

bool is_mtp_copy(const std::string& name) {
  return ends_with(name, kMtpEmbedSuffix) || ends_with(name, kMtpHeadSuffix);
}

}  // namespace

const std::vector<std::string>& hf_config_keys() {
  static const std::vector<std::string> keys = {
      "attention_bias", "attention_dropout", "aux_loss_alpha", "ep_size", "first_k_dense_replace", "hidden_act",
      "hidden_size", "initializer_range", "intermediate_size", "kv_lora_rank", "max_position_embeddings",
      "moe_intermediate_size", "moe_layer_freq", "n_group", "n_routed_experts", "n_shared_experts",
      "norm_topk_prob", "num_attention_heads", "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads",
      "num_nextn_predict_layers", "pretraining_tp", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
      "rms_norm_eps", "rope_interleave", "rope_scaling", "rope_theta", "routed_scaling_factor", "scoring_func",
      "seq_aux", "tie_word_embeddings", "topk_group", "topk_method", "use_cache", "v_head_dim", "vocab_size"};
  return keys;
}

HfExportIssues hf_export_issues(const ModelConfig& c) {
  HfExportIssues r;
  if (c.attention != AttentionKind::MLA)
    r.refusals.push_back(std::string("attention = ") + attention_kind_name(c.attention) +
                         ": Hugging Face's DeepseekV3ForCausalLM has only MLA attention; from_pretrained would drop "
                         "the q_proj/k_proj/v_proj weights as unexpected and initialise the MLA projections "
                         "(kv_a_proj_with_mqa, kv_b_proj, ...) at random");
  if (c.attention == AttentionKind::MLA && c.rms_norm_eps != 1e-6)
    r.warnings.push_back("rms_norm_eps = " + str(c.rms_norm_eps) + ": HF's DeepseekV3 builds " +
                         (c.q_lora_rank > 0 ? "q_a_layernorm and kv_a_layernorm" : "kv_a_layernorm") +
                         " with its default eps 1e-6 whatever config.json says, so their outputs (and the logits) "
                         "drift slightly from this model's");
  if (hf_has_moe(c)) {
    if (c.scoring_func != ScoreFunc::Sigmoid)
      r.warnings.push_back(std::string("scoring_func = ") + score_func_name(c.scoring_func) +
                           ": HF's DeepseekV3 router always scores with sigmoid, so its expert choice and gate "
                           "values differ from this model's");
    if (c.capacity_factor > 0)
      r.warnings.push_back("capacity_factor = " + str(c.capacity_factor) +
                           ": HF routes dropless, so the tokens moelab drops at an expert's capacity reach it in HF "
                           "(the logits differ wherever moelab dropped a token)");
    if (!c.aux_free_bias && c.n_group > 1)
      r.warnings.push_back("aux_free_bias = false with n_group = " + std::to_string(c.n_group) +
                           ": moelab scores a group by its best expert (DeepSeek-V2's group_limited_greedy), HF's "
                           "DeepseekV3 router by the sum of its top-2 scores, so HF may keep other groups");
    if (c.n_routed_experts / c.n_group < 2)
      r.warnings.push_back("n_routed_experts = " + std::to_string(c.n_routed_experts) + " in n_group = " +
                           std::to_string(c.n_group) +
                           " groups: one expert per group, but HF's router sums the top-2 scores of each group "
                           "and fails on groups of one");
    if (c.node_limited() && c.node_score_topk() != 2)
      r.warnings.push_back("max_nodes_per_token = " + std::to_string(c.max_nodes_per_token) + " with expert_nodes = " +
                           std::to_string(c.expert_nodes) + ": config.json limits groups = nodes (n_group = " +
                           std::to_string(c.expert_nodes) + ", topk_group = " + std::to_string(c.max_nodes_per_token) +
                           "), but training scored a node by the sum of its top ceil(num_experts_per_tok / "
                           "max_nodes_per_token) = " + std::to_string(c.node_score_topk()) +
                           " selection scores and HF's DeepseekV3 router sums the top 2, so HF's routing differs "
                           "from training's" +
                           (c.n_routed_experts / c.expert_nodes < 2 ? " (and fails on nodes of one expert)" : ""));
    if (!c.aux_free_bias)
      r.notes.push_back("aux_free_bias = false: zero mlp.gate.e_score_correction_bias buffers are written, because "
                        "HF's router always adds the bias (zero = none)");
    if (c.n_shared_experts == 0)
      r.notes.push_back("n_shared_experts = 0: HF's DeepseekV3MoE always builds a shared-experts MLP, here of width "
                        "0 (it adds nothing); from_pretrained reports its empty weights as missing");
  }
  if (c.ffn == FfnKind::Dense)
    r.notes.push_back("ffn = dense: first_k_dense_replace is written as num_hidden_layers = " +
                      std::to_string(c.num_hidden_layers) + " (every HF layer is a dense SwiGLU of intermediate_size)");
  if (c.num_nextn_predict_layers > 0)
    r.notes.push_back("num_nextn_predict_layers = " + std::to_string(c.num_nextn_predict_layers) +
                      ": the MTP module(s) are stored as model.layers." + std::to_string(c.num_hidden_layers) +
                      ".* and on, after the last layer as in DeepSeek-V3's release, each with copies of embed_tokens "
                      "and the LM head (shared_head.head) as that release carries; HF's DeepseekV3ForCausalLM does "
                      "not build them, so from_pretrained lists those weights as unexpected and skips them");
  return r;
}

nlohmann::json hf_config_json(const ModelConfig& c, DType dtype, int32_t eot_id) {
  MOELAB_CHECK(dtype == DType::F32 || dtype == DType::BF16, "export: dtype ", dtype_name(dtype),
               " is not an export dtype (f32 or bf16)");
  const nlohmann::json eot = eot_id >= 0 ? nlohmann::json(eot_id) : nlohmann::json(nullptr);
  nlohmann::json j;  // std::map-ordered: sorted keys, as transformers' save_pretrained writes them
  j["model_type"] = "deepseek_v3";
  j["architectures"] = {"DeepseekV3ForCausalLM"};
  j["torch_dtype"] = dtype == DType::BF16 ? "bfloat16" : "float32";
  j["bos_token_id"] = eot;
  j["eos_token_id"] = eot;
  j["pad_token_id"] = nullptr;

  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["num_nextn_predict_layers"] = c.num_nextn_predict_layers;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["rope_theta"] = c.rope_theta;
  j["rope_scaling"] = nullptr;
  j["rope_interleave"] = true;  // RoPE rotates adjacent pairs (MODEL.md), as DeepSeek's weights do
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["initializer_range"] = c.initializer_range;
  j["hidden_act"] = "silu";
  j["use_cache"] = true;
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["pretraining_tp"] = 1;

  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.kv_heads();  // MLA: every head has its own key and value (= H)
  // HF's "no query compression" is null (DeepSeek-V2-Lite), not 0.
  j["q_lora_rank"] = c.q_lora_rank > 0 ? nlohmann::json(c.q_lora_rank) : nlohmann::json(nullptr);
  j["kv_lora_rank"] = c.kv_lora_rank;
  j["qk_nope_head_dim"] = c.qk_nope_head_dim;
  j["qk_rope_head_dim"] = c.qk_rope_head_dim;
  j["v_head_dim"] = c.v_head_dim;

  j["intermediate_size"] = c.intermediate_size;
  // A dense model is a DeepSeek-V3 whose every layer is one of the first dense ones.
  j["first_k_dense_replace"] = c.ffn == FfnKind::Dense ? c.num_hidden_layers : c.first_k_dense_replace;
  j["moe_layer_freq"] = 1;
  j["ep_size"] = 1;
  j["moe_intermediate_size"] = c.moe_intermediate_size;
  j["n_routed_experts"] = c.n_routed_experts;
  j["n_shared_experts"] = c.n_shared_experts;
  j["num_experts_per_tok"] = c.num_experts_per_tok;
  j["scoring_func"] = score_func_name(c.scoring_func);
  j["topk_method"] = topk_method(c);
  // Node-limited routing is group-limited routing with the nodes as groups (hf_export_issues warns
  // where HF's top-2 group score is not the node score training used).
  j["n_group"] = c.node_limited() ? c.expert_nodes : c.n_group;
  j["topk_group"] = c.node_limited() ? c.max_nodes_per_token : c.topk_group;
  j["norm_topk_prob"] = c.norm_topk_prob;
  j["routed_scaling_factor"] = c.routed_scaling_factor;
  // DeepSeek's config has one balance-loss coefficient and seq_aux saying whether it is per sequence
  // (V3) or per batch; moelab has both terms, combinable (both also go to "moelab" below).
  const bool seq = c.seq_aux_loss_alpha > 0;
  j["seq_aux"] = seq;
  j["aux_loss_alpha"] = seq ? c.seq_aux_loss_alpha : c.aux_loss_alpha;

  // Every field that the HF keys above do not carry as they are: the keys overlaid with this object
  // give back the exact ModelConfig.
  nlohmann::json own = nlohmann::json::object();
  const nlohmann::json all = to_json(c);
  for (const auto& f : model_config_fields())
    if (!j.contains(f.name) || j[f.name] != all[f.name]) own[f.name] = all[f.name];
  j["moelab"] = own;
  return j;
}

nlohmann::json hf_generation_config_json(int32_t eot_id) {
  const nlohmann::json eot = eot_id >= 0 ? nlohmann::json(eot_id) : nlohmann::json(nullptr);
  nlohmann::json j;
  j["bos_token_id"] = eot;
  j["eos_token_id"] = eot;
  // Plain sampling from the model's distribution (top_k 0 turns off transformers' default top-50).
  j["do_sample"] = true;
  j["temperature"] = 1.0;
  j["top_k"] = 0;
  j["top_p"] = 1.0;
  return j;
}

nlohmann::json hf_tokenizer_config_json(const Tokenizer& tok, int64_t max_len) {
  const nlohmann::json eot = tok.eot_id() >= 0 ? nlohmann::json(kEndOfText) : nlohmann::json(nullptr);
  nlohmann::json j;
  // Without a tokenizer_class, AutoTokenizer would pick the class registered for deepseek_v3 (a
  // Llama tokenizer that prepends a BOS); the generic fast tokenizer runs tokenizer.json as it is.
  j["tokenizer_class"] = "PreTrainedTokenizerFast";
  j["bos_token"] = eot;
  j["eos_token"] = eot;
  j["model_max_length"] = max_len;
  j["clean_up_tokenization_spaces"] = false;  // decode gives back the exact text
  return j;
}

ExportSummary export_hf(const LoadedCheckpoint& ck, const std::string& out_dir, const ExportOptions& opt) {
  MOELAB_CHECK(ck.model, "export: checkpoint ", ck.path, " has no model loaded");
  MOELAB_CHECK(opt.dtype == DType::F32 || opt.dtype == DType::BF16, "export: --dtype ", dtype_name(opt.dtype),
               " is not supported (f32 or bf16)");
  const ModelConfig& cfg = ck.model->config();
  const HfExportIssues issues = hf_export_issues(cfg);
  if (!issues.refusals.empty() && !opt.force) {
    std::ostringstream msg;
    msg << "export of " << ck.path << " refused: " << issues.refusals.front()
        << ". Pass --force to export it anyway (the weights keep moelab's names)";
    MOELAB_FAIL(msg.str());
  }

  const fs::path out = normalized_out_dir(out_dir);
  const fs::path tmp = out.string() + ".tmp";
  if (fs::exists(out)) {
    MOELAB_CHECK(fs::is_directory(out), "export: ", out.string(), " exists and is not a directory");
    MOELAB_CHECK(opt.overwrite || fs::is_empty(out), "export: ", out.string(),
                 " exists and is not empty; remove it, choose another --out, or pass --overwrite");
  }

  ExportSummary s;
  s.out_dir = out.string();
  s.checkpoint = ck.path;
  s.step = ck.state.step;
  s.dtype = opt.dtype;
  for (const auto& r : issues.refusals) s.warnings.push_back(r + " (exported anyway: --force)");
  s.warnings.insert(s.warnings.end(), issues.warnings.begin(), issues.warnings.end());
  s.notes = issues.notes;
  if (!ck.tokenizer) s.notes.push_back("the checkpoint has no tokenizer: no tokenizer.json, bos/eos_token_id are null");
  const int32_t eot = ck.tokenizer ? ck.tokenizer->eot_id() : -1;

  if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
  fs::remove_all(tmp);  // a leftover of a crash during an earlier export
  try {
    fs::create_directories(tmp);
    const auto tensors = hf_tensors(*ck.model, opt.dtype);
    write_safetensors((tmp / kModelFile).string(), tensors, {{"format", "pt"}});
    for (const auto& [name, t] : tensors)
      if (!is_mtp_copy(name)) s.parameters += t.numel();
    s.tensors = static_cast<int64_t>(tensors.size());
    s.bytes = fs::file_size(tmp / kModelFile);
    s.files.push_back(kModelFile);
    write_json(tmp / kConfigFile, hf_config_json(cfg, opt.dtype, eot));
    s.files.push_back(kConfigFile);
    write_json(tmp / kGenerationFile, hf_generation_config_json(eot));
    s.files.push_back(kGenerationFile);
    if (ck.tokenizer) {
      ck.tokenizer->save((tmp / kTokenizerFile).string());
      s.files.push_back(kTokenizerFile);
      write_json(tmp / kTokenizerConfigFile, hf_tokenizer_config_json(*ck.tokenizer, cfg.max_position_embeddings));
      s.files.push_back(kTokenizerConfigFile);
    }
    for (const auto& f : s.files) fsync_path(tmp / f);
    fsync_path(tmp);

    // Publish. An existing directory (--overwrite) steps aside as "<out>.old" and is removed only
    // once the new one is in place (and put back if that fails), so the real name never holds a
    // half-written export.
    const fs::path old = out.string() + ".old";
    fs::remove_all(old);
    const bool replacing = fs::exists(out);
    if (replacing) fs::rename(out, old);
    try {
      fs::rename(tmp, out);
    } catch (...) {
      std::error_code ec;
      if (replacing) fs::rename(old, out, ec);
      throw;
    }
    fs::remove_all(old);
    if (!out.parent_path().empty()) fsync_path(out.parent_path());
  } catch (...) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    throw;
  }
  return s;
}

ExportSummary export_checkpoint(const std::string& ckpt_or_run_dir, const std::string& out_dir,
                                const ExportOptions& opt) {
  const LoadedCheckpoint ck = load_checkpoint(resolve_checkpoint(ckpt_or_run_dir));
  return export_hf(ck, out_dir, opt);
}

}  // namespace moelab
