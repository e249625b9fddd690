// Parameter, FLOP, KV-cache and activation counting for `moelab info`; see model_info.h.
#include "train/model_info.h"

#include <cinttypes>
#include <cstdio>
#include <sstream>

#include "core/nn/model.h"
#include "core/ops/fp8_quant.h"

namespace moelab {

namespace {

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }
bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

// The trunk layer of a "model.layers.{l}." name, or -1.
int64_t layer_of(const std::string& name) {
  const std::string prefix = "model.layers.";
  if (!starts_with(name, prefix)) return -1;
  return std::stoll(name.substr(prefix.size()));
}

bool is_norm(const std::string& name) {
  return contains(name, "layernorm.") || contains(name, "norm.weight");  // input_layernorm, q_a_layernorm, enorm, ...
}

std::string with_commas(int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return (v < 0 ? "-" : "") + out;
}

// 1234567 -> "1.23 M"; unit "B" (bytes: binary prefixes, "1.18 MiB"), "FLOP" or "" (a count).
std::string human(double v, const std::string& unit) {
  const bool bytes = unit == "B";
  const double base = bytes ? 1024.0 : 1000.0;
  const char* prefixes[] = {"", "K", "M", "G", "T", "P", "E"};
  int i = 0;
  while (v >= base && i < 6) v /= base, ++i;
  char buf[64];
  if (i == 0) std::snprintf(buf, sizeof(buf), "%.0f %s", v, unit.c_str());
  else std::snprintf(buf, sizeof(buf), "%.2f %s%s%s", v, prefixes[i], bytes ? "i" : "", unit.c_str());
  std::string s = buf;
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// A block of cfg declared into scratch buffers (nothing is allocated), for the figures of one config.
LayerCost declared_attention_cost(const ModelConfig& cfg, int64_t seq_len) {
  cfg.validate();
  ParamBuffer params, buffers;
  const Block block(params, buffers, "model.layers.0", cfg, /*moe=*/false);
  return block.attention_cost({1, seq_len, DType::F32});
}
constexpr int64_t kBf16Bytes = 2;  // the KV cache's convention
}  // namespace

double attention_flops_per_token(const ModelConfig& cfg, int64_t seq_len, bool causal_half) {
  const double blocks = static_cast<double>(cfg.num_hidden_layers + cfg.num_nextn_predict_layers);
  const double half = blocks * declared_attention_cost(cfg, seq_len).flops(Phase::Attention);
  return causal_half ? half : 2 * half;
}

int64_t kv_cache_bytes_per_token_layer(const ModelConfig& cfg) {
  return declared_attention_cost(cfg, 1).kv_cache_elements * kBf16Bytes;
}

int64_t mha_kv_cache_bytes_per_token_layer(const ModelConfig& cfg) {
  return declared_attention_cost(cfg, 1).kv_cache_mha_elements * kBf16Bytes;
}

double ModelInfo::logits_bytes() const {
  return 4.0 * static_cast<double>(vocab) * static_cast<double>(loss_heads) * static_cast<double>(batch * seq_len);
}

ModelInfo model_info(const Model& model, int64_t batch, int64_t seq_len, DType act) {
  const ModelConfig& cfg = model.config();
  ModelInfo info;
  const int64_t L = cfg.num_hidden_layers, E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  // Routed experts: K of the E experts of a layer work for a token. Every expert of every layer has
  // the same shape, so the active part of any set of whole layers' experts is total / E * K.
  auto routed_active = [&](int64_t total) { return total / E * K; };

  // The components, by the declared names.
  for (const ParamBuffer::Entry& e : model.params().entries()) {
    const std::string& name = e.spec.name;
    const int64_t n = e.spec.shape.numel();
    const int64_t layer = layer_of(name);
    ParamCount* part = &info.other;
    bool routed = false;
    if (name == "model.embed_tokens.weight") part = &info.embedding;
    else if (name == "lm_head.weight") part = &info.lm_head;
    else if (layer >= L) part = &info.mtp, routed = contains(name, ".mlp.experts.");
    else if (is_norm(name)) part = &info.norms;
    else if (layer >= 0 && contains(name, ".self_attn.")) part = &info.attention;
    else if (layer >= 0 && contains(name, ".mlp.experts.")) part = &info.routed_experts, routed = true;
    else if (layer >= 0 && contains(name, ".mlp.shared_experts.")) part = &info.shared_experts;
    else if (layer >= 0 && contains(name, ".mlp.gate.")) part = &info.router;
    else if (layer >= 0 && contains(name, ".mlp.")) part = &info.dense_ffn;
    part->total += n;
    if (routed && layer >= L) info.mtp_routed_experts.total += n;
    if (!routed) part->active += n;
  }
  info.routed_experts.active = routed_active(info.routed_experts.total);
  info.mtp_routed_experts.active = routed_active(info.mtp_routed_experts.total);
  info.mtp.active += info.mtp_routed_experts.active;
  ParamCount declared;
  for (const ParamCount* p : {&info.embedding, &info.attention, &info.dense_ffn, &info.shared_experts,
                              &info.routed_experts, &info.router, &info.norms, &info.lm_head, &info.mtp, &info.other}) {
    declared.total += p->total;
    declared.active += p->active;
  }
  for (const ParamBuffer::Entry& e : model.buffers().entries()) info.buffers += e.spec.shape.numel();

  // Everything else, from the layers.
  info.batch = batch;
  info.seq_len = seq_len;
  info.act = act;
  const Model::CostParts parts = model.cost_parts({batch, seq_len, act});
  info.cost = parts.total();
  info.activation_bytes_f32 = static_cast<double>(model.cost({batch, seq_len, DType::F32}).activation_bytes);
  info.activation_bytes_bf16 = static_cast<double>(model.cost({batch, seq_len, DType::BF16}).activation_bytes);
  info.params = {info.cost.params, info.cost.active_params};
  MOELAB_CHECK(info.params.total == declared.total && info.params.active == declared.active,
               "model_info: the layers report ", info.params.total, " parameters (", info.params.active,
               " active) but declared ", declared.total, " (", declared.active, " active): a layer's cost() "
               "no longer matches its declarations");

  // FLOPs: the LM head multiplies once per loss head, tied or not (Model::cost_parts).
  info.loss_heads = 1 + cfg.num_nextn_predict_layers;
  info.vocab = cfg.vocab_size;
  info.matmul_params = info.cost.matmul_params;
  info.flops_matmul =
      info.cost.flops(Phase::DenseGemm) + info.cost.flops(Phase::ExpertGemm) + info.cost.flops(Phase::Router);
  info.flops_attention = info.cost.flops(Phase::Attention);
  info.flops_attention_full = 2 * info.flops_attention;  // the causal count is exactly half the square
  info.flops_per_token = info.flops_matmul + info.flops_attention;

  const Block& block = model.blocks().front();
  const LayerCost attention = block.attention_cost({batch, seq_len, act});
  info.kv_bytes = attention.kv_cache_elements * kBf16Bytes;
  info.kv_bytes_mha = attention.kv_cache_mha_elements * kBf16Bytes;
  info.attention_dims = block.attention_dims();
  info.attention_shape = block.describe_attention();
  info.kv_cache_formula = block.kv_cache_formula();

  for (size_t l = 0; l < parts.blocks.size(); ++l) {
    const int64_t saved = parts.blocks[l].saved_per_token;
    (model.blocks()[l].is_moe() ? info.act_moe_layer : info.act_dense_layer) = saved;
    info.act_layers += saved;
  }
  info.act_head = parts.head.saved_per_token;
  for (const LayerCost& m : parts.mtp) info.act_mtp += m.saved_per_token;
  info.act_total = parts.embedding.saved_per_token + info.act_layers + info.act_head + info.act_mtp;
  return info;
}

std::string format_model_info(const ModelConfig& c, const ModelInfo& info) {
  std::ostringstream os;
  char buf[512];
  const int64_t L = c.num_hidden_layers, depth = c.num_nextn_predict_layers, T = info.seq_len, B = info.batch;
  const bool moe = c.ffn == FfnKind::MoE;

  // The shape in one glance.
  os << "model: L=" << L << " D=" << c.hidden_size << " V=" << c.vocab_size << "; attention "
     << attention_kind_name(c.attention) << " " << info.attention_shape;
  os << "; ffn " << ffn_kind_name(c.ffn);
  if (moe)
    os << " E=" << c.n_routed_experts << " K=" << c.num_experts_per_tok << " F=" << c.moe_intermediate_size
       << " shared=" << c.n_shared_experts << " " << score_func_name(c.scoring_func)
       << (c.aux_free_bias ? " aux-free" : "");
  if (moe && c.first_k_dense_replace > 0)
    os << "; the first " << c.first_k_dense_replace << " layer" << (c.first_k_dense_replace > 1 ? "s" : "") << " dense";
  if (!moe || c.first_k_dense_replace > 0) os << " (intermediate_size " << c.intermediate_size << ")";
  os << "; MTP depth " << depth << "\n";
  os << "train: batch B=" << B << ", seq_len T=" << T << " (" << with_commas(B * T) << " tokens per step)\n\n";

  // Parameters.
  std::snprintf(buf, sizeof(buf), "%-34s %16s %16s\n", "parameters", "total", "active/token");
  os << buf;
  auto row = [&](const std::string& label, const ParamCount& p) {
    std::snprintf(buf, sizeof(buf), "  %-32s %16s %16s\n", label.c_str(), with_commas(p.total).c_str(),
                  with_commas(p.active).c_str());
    os << buf;
  };
  row("embedding", info.embedding);
  row("attention", info.attention);
  if (info.dense_ffn.total) row("dense FFN", info.dense_ffn);
  if (moe) {
    row("shared experts", info.shared_experts);
    row("routed experts (K=" + std::to_string(c.num_experts_per_tok) + " of E=" + std::to_string(c.n_routed_experts) +
            ")",
        info.routed_experts);
    row("router", info.router);
  }
  row("norms", info.norms);
  row(c.tie_word_embeddings ? "LM head (tied: the embedding)" : "LM head", info.lm_head);
  if (depth > 0) row("MTP modules (" + std::to_string(depth) + ")", info.mtp);
  if (info.other.total) row("other", info.other);
  row("total", info.params);
  std::snprintf(buf, sizeof(buf), "  %-32s %16s %16s\n", "  (in short)",
                human(static_cast<double>(info.params.total), "").c_str(),
                human(static_cast<double>(info.params.active), "").c_str());
  os << buf;
  if (depth > 0) {
    const ParamCount inference{info.params.total - info.mtp.total, info.params.active - info.mtp.active};
    row("without MTP (inference)", inference);
  }
  if (info.buffers)
    os << "  + " << with_commas(info.buffers) << " non-gradient buffer values (aux-loss-free expert biases)\n";

  // FLOPs.
  os << "\ntraining FLOPs per token (forward + backward = 3 x forward; MODEL.md \"Counting for MFU\"):\n";
  std::snprintf(buf, sizeof(buf), "  matmuls   6 x %s active matmul params = %s\n",
                with_commas(info.matmul_params).c_str(), human(info.flops_matmul, "FLOP").c_str());
  os << buf;
  os << "            (attention projections, dense FFN / shared + K routed experts, router"
     << (depth > 0 ? ", eh_proj" : "") << ", LM head x " << info.loss_heads << (depth > 0 ? " (main + MTP heads)" : "")
     << "; not the embedding lookup, not the norms)\n";
  std::snprintf(buf, sizeof(buf),
                "  attention 6 x L' x T x H x (Dqk+Dv) / 2 = %s   (causal: half of the T^2 work; L' = %" PRId64
                " blocks%s, T = %" PRId64 ", Dqk = %" PRId64 ", Dv = %" PRId64 "; the full square would be %s)\n",
                human(info.flops_attention, "FLOP").c_str(), L + depth, depth > 0 ? " incl. MTP" : "", T,
                info.attention_dims.qk_dim, info.attention_dims.v_dim,
                human(info.flops_attention_full, "FLOP").c_str());
  os << buf;
  std::snprintf(buf, sizeof(buf), "  total     %s per token = %s per step of %s tokens\n",
                human(info.flops_per_token, "FLOP").c_str(),
                human(info.flops_per_token * static_cast<double>(B * T), "FLOP").c_str(), with_commas(B * T).c_str());
  os << buf;

  // FP8 training.
  const LayerCost& cost = info.cost;
  const double operands = 2.0 * static_cast<double>(cost.fp8_in + cost.fp8_out);
  const double fp8_act_bytes = 1.0 + 4.0 / static_cast<double>(kFp8BlockSize);  // e4m3 + a scale per 1 x 128
  const double fp8_weight_bytes = 1.0 + 4.0 / static_cast<double>(kFp8BlockSize * kFp8BlockSize);
  os << "\nFP8 training (train.precision = fp8; core/ops/fp8_matmul.h): the Linear GEMMs in e4m3\n";
  std::snprintf(buf, sizeof(buf), "  %s of the %s training FLOPs per token (%.0f%%) are Linear GEMMs (attention "
                "projections, experts, dense FFN%s);\n  the LM head, the router and attention scores stay bf16/fp32\n",
                human(cost.fp8_flops, "FLOP").c_str(), human(info.flops_per_token, "FLOP").c_str(),
                100.0 * cost.fp8_flops / info.flops_per_token, depth > 0 ? ", eh_proj" : "");
  os << buf;
  std::snprintf(buf, sizeof(buf), "  activation operands per token (x forward; dy for dgrad, dy and x for wgrad: "
                "2 x %s numbers):\n    bf16 %s, fp8 %s (1 B + a 4 B scale per 128)\n",
                with_commas(cost.fp8_in + cost.fp8_out).c_str(), human(2.0 * operands, "B").c_str(),
                human(fp8_act_bytes * operands, "B").c_str());
  os << buf;
  const double weights = static_cast<double>(cost.fp8_weights);
  std::snprintf(buf, sizeof(buf), "  Linear weights (%s), read by forward and dgrad each micro-batch: bf16 %s, fp8 %s "
                "per read\n", with_commas(cost.fp8_weights).c_str(), human(2.0 * weights, "B").c_str(),
                human(fp8_weight_bytes * weights, "B").c_str());
  os << buf;
  std::snprintf(buf, sizeof(buf), "  Linear inputs kept for backward (at most, counted per GEMM): %s numbers per "
                "token = %s per step in bf16, %s cached in fp8\n    (DeepSeek-V3 caches them in fp8; moelab keeps them in the "
                "activation dtype and quantises again in backward)\n",
                with_commas(cost.fp8_in).c_str(), human(2.0 * static_cast<double>(cost.fp8_in * B * T), "B").c_str(),
                human(fp8_act_bytes * static_cast<double>(cost.fp8_in * B * T), "B").c_str());
  os << buf;

  // KV cache.
  os << "\nKV cache for generation (bf16, per token per layer):\n";
  if (info.kv_bytes_mha != info.kv_bytes) {
    std::snprintf(buf, sizeof(buf),
                  "  %s x 2 B = %" PRId64 " B; MHA with the same heads (H x (Dqk+Dv)) x 2 B = %" PRId64
                  " B: %.1fx smaller\n",
                  info.kv_cache_formula.c_str(), info.kv_bytes, info.kv_bytes_mha,
                  static_cast<double>(info.kv_bytes_mha) / static_cast<double>(info.kv_bytes));
  } else {
    std::snprintf(buf, sizeof(buf), "  %s x 2 B = %" PRId64 " B\n", info.kv_cache_formula.c_str(), info.kv_bytes);
  }
  os << buf;
  std::snprintf(buf, sizeof(buf), "  all %" PRId64 " layers: %s per token, %s for one sequence of T = %" PRId64 "\n", L,
                human(static_cast<double>(info.kv_bytes * L), "B").c_str(),
                human(static_cast<double>(info.kv_bytes * L * T), "B").c_str(), T);
  os << buf;

  // Memory.
  std::snprintf(buf, sizeof(buf),
                "\nactivation memory of one step (B x T = %s tokens), counted by the layers (dropless):\n"
                "  the arena, forward + backward: %s in fp32 (cpu), %s in bf16 (cuda mixed precision)\n",
                with_commas(B * T).c_str(), human(info.activation_bytes_f32, "B").c_str(),
                human(info.activation_bytes_bf16, "B").c_str());
  os << buf;
  os << "  of which kept for backward, per token (fp32):";
  if (info.act_dense_layer) os << " " << with_commas(4 * info.act_dense_layer) << " B per dense block,";
  if (info.act_moe_layer) os << " " << with_commas(4 * info.act_moe_layer) << " B per MoE block,";
  os << " " << with_commas(4 * info.act_head) << " B per loss head (logits V = " << c.vocab_size << ")";
  if (depth > 0) os << ", " << with_commas(4 * info.act_mtp) << " B for the MTP module(s)";
  os << "\n";
  std::snprintf(buf, sizeof(buf), "  kept for backward in one step: %s, of which logits %s\n",
                human(info.saved_bytes(), "B").c_str(), human(info.logits_bytes(), "B").c_str());
  os << buf;
  std::snprintf(buf, sizeof(buf), "training state: 16 B/param (fp32 weights, gradients, AdamW m and v) = %s\n",
                human(16.0 * static_cast<double>(info.params.total), "B").c_str());
  os << buf;
  return os.str();
}

}  // namespace moelab
