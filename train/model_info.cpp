// Parameter, FLOP, KV-cache and activation counting for `moelab info`; see model_info.h.
#include "train/model_info.h"

#include <cinttypes>
#include <cstdio>
#include <sstream>

#include "core/nn/model.h"

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

// Per-token activation elements of the pieces of a block (see model_info.h for what is counted).
int64_t attention_saved(const ModelConfig& c) {
  const int64_t H = c.num_attention_heads;
  if (c.attention == AttentionKind::MLA) {
    const int64_t q = c.q_lora_rank > 0 ? 2 * c.q_lora_rank + 1 : 0;  // cq, q_a_layernorm input + rstd
    return q + 2 * c.kv_lora_rank + 1                                 // kv_a_layernorm input + rstd, ckv
           + 2 * H * (c.qk_nope_head_dim + c.qk_rope_head_dim)        // q, k
           + 2 * H * c.v_head_dim                                     // v, out
           + H;                                                       // lse
  }
  const int64_t hd = c.mha_head_dim(), Hkv = c.kv_heads();
  return 2 * H * hd + 2 * Hkv * hd + H;  // q, out; k, v; lse
}

int64_t dense_ffn_saved(const ModelConfig& c) { return 3 * c.intermediate_size; }  // gate, up, hidden

int64_t moe_saved(const ModelConfig& c) {
  const int64_t E = c.n_routed_experts, K = c.num_experts_per_tok, F = c.moe_intermediate_size;
  return 2 * E                              // router logits, scores
         + 3 * K                            // topk_idx, topk_weights, dispatch positions
         + (c.capacity_factor > 0 ? K : 0)  // expert_idx after drops
         + 2 * K * c.hidden_size            // dispatched rows (the experts' input), expert outputs
         + 3 * K * F                        // each expert's gate, up, hidden
         + 3 * c.n_shared_experts * F;      // the shared experts' gate, up, hidden
}

// A block: its input, the two norms (rstd) and their outputs, the residual h, the two branches.
int64_t block_saved(const ModelConfig& c, bool moe) {
  const int64_t D = c.hidden_size;
  return D + 1 + D + attention_saved(c) + D + 1 + D + (moe ? moe_saved(c) : dense_ffn_saved(c));
}

// A loss head: its input, the final norm (rstd, output), logits, lse, losses, ids and targets.
int64_t head_saved(const ModelConfig& c) { return c.hidden_size + 1 + c.hidden_size + c.vocab_size + 2 + 2; }

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

}  // namespace

double attention_flops_per_token(const ModelConfig& cfg, int64_t seq_len, bool causal_half) {
  const double blocks = static_cast<double>(cfg.num_hidden_layers + cfg.num_nextn_predict_layers);
  double dqk, dv;
  if (cfg.attention == AttentionKind::MLA) {
    dqk = static_cast<double>(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim);
    dv = static_cast<double>(cfg.v_head_dim);
  } else {
    dqk = dv = static_cast<double>(cfg.mha_head_dim());
  }
  const double full =
      6.0 * blocks * static_cast<double>(seq_len) * static_cast<double>(cfg.num_attention_heads) * (dqk + dv);
  return causal_half ? full / 2 : full;
}

int64_t kv_cache_bytes_per_token_layer(const ModelConfig& cfg) {
  constexpr int64_t kBf16 = 2;
  if (cfg.attention == AttentionKind::MLA) return (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * kBf16;
  return 2 * cfg.kv_heads() * cfg.mha_head_dim() * kBf16;
}

int64_t mha_kv_cache_bytes_per_token_layer(const ModelConfig& cfg) {
  constexpr int64_t kBf16 = 2;
  const int64_t H = cfg.num_attention_heads;
  if (cfg.attention == AttentionKind::MLA)
    return (H * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) + H * cfg.v_head_dim) * kBf16;
  return 2 * H * cfg.mha_head_dim() * kBf16;
}

double ModelInfo::logits_bytes() const {
  return 4.0 * static_cast<double>(vocab) * static_cast<double>(loss_heads) * static_cast<double>(batch * seq_len);
}

ModelInfo model_info(const ModelConfig& cfg, const ParamBuffer& params, const ParamBuffer& buffers, int64_t batch,
                     int64_t seq_len) {
  ModelInfo info;
  const int64_t L = cfg.num_hidden_layers, E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  const int64_t D = cfg.hidden_size, V = cfg.vocab_size, depth = cfg.num_nextn_predict_layers;
  // Routed experts: K of the E experts of a layer work for a token. Every expert of every layer has
  // the same shape, so the active part of any set of whole layers' experts is total / E * K.
  auto routed_active = [&](int64_t total) { return total / E * K; };

  int64_t matmul_total = 0;  // every matmul weight but the embedding and the LM head
  for (const ParamBuffer::Entry& e : params.entries()) {
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
    if (part != &info.embedding && part != &info.lm_head && !is_norm(name) && !routed && e.spec.shape.ndim() == 2)
      matmul_total += n;
  }
  info.routed_experts.active = routed_active(info.routed_experts.total);
  info.mtp_routed_experts.active = routed_active(info.mtp_routed_experts.total);
  info.mtp.active += info.mtp_routed_experts.active;
  for (const ParamCount* p : {&info.embedding, &info.attention, &info.dense_ffn, &info.shared_experts,
                              &info.routed_experts, &info.router, &info.norms, &info.lm_head, &info.mtp, &info.other}) {
    info.params.total += p->total;
    info.params.active += p->active;
  }
  for (const ParamBuffer::Entry& e : buffers.entries()) info.buffers += e.spec.shape.numel();

  // FLOPs: the LM head multiplies once per loss head, tied or not.
  info.loss_heads = 1 + depth;
  info.vocab = V;
  info.matmul_params =
      matmul_total + info.routed_experts.active + info.mtp_routed_experts.active + info.loss_heads * V * D;
  info.flops_matmul = 6.0 * static_cast<double>(info.matmul_params);
  info.flops_attention = attention_flops_per_token(cfg, seq_len, true);
  info.flops_attention_full = attention_flops_per_token(cfg, seq_len, false);
  info.flops_per_token = info.flops_matmul + info.flops_attention;

  info.kv_bytes = kv_cache_bytes_per_token_layer(cfg);
  info.kv_bytes_mha = mha_kv_cache_bytes_per_token_layer(cfg);

  info.batch = batch;
  info.seq_len = seq_len;
  info.act_dense_layer = block_saved(cfg, false);
  info.act_moe_layer = cfg.ffn == FfnKind::MoE ? block_saved(cfg, true) : 0;
  for (int64_t l = 0; l < L; ++l) info.act_layers += cfg.is_moe_layer(l) ? info.act_moe_layer : info.act_dense_layer;
  info.act_head = head_saved(cfg);
  // An MTP module: Emb(t_{i+k}), the two norms' rstd, the concatenation [2D], its block (whose
  // input is eh_proj's output) and its head (whose input is the block's output).
  const int64_t mtp_block = cfg.ffn == FfnKind::MoE ? info.act_moe_layer : info.act_dense_layer;
  info.act_mtp = depth * (D + 2 + 2 * D + mtp_block + info.act_head);
  info.act_total = info.act_layers + info.act_head + info.act_mtp;
  return info;
}

ModelInfo model_info(const Model& model, int64_t batch, int64_t seq_len) {
  return model_info(model.config(), model.params(), model.buffers(), batch, seq_len);
}

std::string format_model_info(const ModelConfig& c, const ModelInfo& info) {
  std::ostringstream os;
  char buf[512];
  const int64_t L = c.num_hidden_layers, depth = c.num_nextn_predict_layers, T = info.seq_len, B = info.batch;
  const bool moe = c.ffn == FfnKind::MoE;

  // The shape in one glance.
  os << "model: L=" << L << " D=" << c.hidden_size << " V=" << c.vocab_size << "; attention "
     << attention_kind_name(c.attention) << " H=" << c.num_attention_heads;
  if (c.attention == AttentionKind::MLA)
    os << " Cq=" << c.q_lora_rank << " Ckv=" << c.kv_lora_rank << " Dn=" << c.qk_nope_head_dim
       << " Dr=" << c.qk_rope_head_dim << " Dv=" << c.v_head_dim;
  else os << " Hkv=" << c.kv_heads() << " head_dim=" << c.mha_head_dim() << " rope_dim=" << c.mha_rope_dim();
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
  const char* dims = c.attention == AttentionKind::MLA ? "(Dn+Dr+Dv)" : "(2 x head_dim)";
  std::snprintf(buf, sizeof(buf),
                "  attention 6 x L' x T x H x %s / 2 = %s   (causal: half of the T^2 work; L' = %" PRId64
                " blocks%s, T = %" PRId64 "; the full square would be %s)\n",
                dims, human(info.flops_attention, "FLOP").c_str(), L + depth, depth > 0 ? " incl. MTP" : "", T,
                human(info.flops_attention_full, "FLOP").c_str());
  os << buf;
  std::snprintf(buf, sizeof(buf), "  total     %s per token = %s per step of %s tokens\n",
                human(info.flops_per_token, "FLOP").c_str(),
                human(info.flops_per_token * static_cast<double>(B * T), "FLOP").c_str(), with_commas(B * T).c_str());
  os << buf;

  // KV cache.
  os << "\nKV cache for generation (bf16, per token per layer):\n";
  if (c.attention == AttentionKind::MLA) {
    std::snprintf(
        buf, sizeof(buf),
        "  MLA (Ckv + Dr) x 2 B = %" PRId64
        " B; MHA with the same heads (H x (Dn+Dr) keys + H x Dv values) x 2 B = %" PRId64 " B: %.1fx smaller\n",
        info.kv_bytes, info.kv_bytes_mha, static_cast<double>(info.kv_bytes_mha) / static_cast<double>(info.kv_bytes));
  } else {
    std::snprintf(buf, sizeof(buf), "  %s 2 x Hkv x head_dim x 2 B = %" PRId64 " B (MHA: %" PRId64 " B, %.1fx)\n",
                  attention_kind_name(c.attention), info.kv_bytes, info.kv_bytes_mha,
                  static_cast<double>(info.kv_bytes_mha) / static_cast<double>(info.kv_bytes));
  }
  os << buf;
  std::snprintf(buf, sizeof(buf), "  all %" PRId64 " layers: %s per token, %s for one sequence of T = %" PRId64 "\n", L,
                human(static_cast<double>(info.kv_bytes * L), "B").c_str(),
                human(static_cast<double>(info.kv_bytes * L * T), "B").c_str(), T);
  os << buf;

  // Memory.
  os << "\nactivation memory, ESTIMATE (what the layers save for backward, fp32, dropless):\n";
  std::snprintf(buf, sizeof(buf), "  per token: %s B per dense block", with_commas(4 * info.act_dense_layer).c_str());
  os << buf;
  if (info.act_moe_layer) os << ", " << with_commas(4 * info.act_moe_layer) << " B per MoE block";
  os << ", " << with_commas(4 * info.act_head) << " B per loss head (logits V = " << c.vocab_size << ")";
  if (depth > 0) os << ", " << with_commas(4 * info.act_mtp) << " B for the MTP module(s)";
  os << "\n";
  std::snprintf(buf, sizeof(buf), "  one step (B x T = %s tokens): %s, of which logits %s\n",
                with_commas(B * T).c_str(), human(info.activation_bytes(), "B").c_str(),
                human(info.logits_bytes(), "B").c_str());
  os << buf;
  os << "  (the step's arena also holds forward temporaries and backward's gradients: `moelab bench` measures its "
        "peak)\n";
  std::snprintf(buf, sizeof(buf), "training state: 16 B/param (fp32 weights, gradients, AdamW m and v) = %s\n",
                human(16.0 * static_cast<double>(info.params.total), "B").c_str());
  os << buf;
  return os.str();
}

}  // namespace moelab
