// `moelab info`'s counting (train/model_info.h) against hand computation: the parameters of the
// tiny preset per component from the config's formulas (not from the ParamBuffer), the FLOPs of a
// dense MHA model, the KV cache of MLA, MHA and GQA, and the activation estimate of a small block.
#include <gtest/gtest.h>

#include <string>

#include "core/nn/model.h"
#include "train/config_file.h"
#include "train/model_info.h"

namespace moelab {
namespace {

std::string preset_path(const std::string& name) {
  return std::string(MOELAB_SOURCE_DIR) + "/examples/" + name + ".toml";
}

TEST(ModelInfo, TinyPresetParametersByHand) {
  const RunConfig run = load_config(preset_path("tiny"));
  const ModelConfig& c = run.model;
  // The formulas of MODEL.md with the preset's numbers (V 256, D 32, L 2, H 2, Cq 16, Ckv 16, Dn 8,
  // Dr 4, Dv 8, dense width 64 for layer 0, E 8 experts of F 16, 1 shared, K 2, MTP depth 1).
  const int64_t V = c.vocab_size, D = c.hidden_size, L = c.num_hidden_layers, H = c.num_attention_heads;
  const int64_t Cq = c.q_lora_rank, Ckv = c.kv_lora_rank, Dn = c.qk_nope_head_dim, Dr = c.qk_rope_head_dim;
  const int64_t Dv = c.v_head_dim, I = c.intermediate_size, F = c.moe_intermediate_size, E = c.n_routed_experts;
  const int64_t S = c.n_shared_experts, K = c.num_experts_per_tok, dense = c.first_k_dense_replace;
  const int64_t moe_layers = L - dense, depth = c.num_nextn_predict_layers;
  ASSERT_GT(Cq, 0);
  ASSERT_EQ(dense, 1);
  ASSERT_EQ(depth, 1);
  ASSERT_FALSE(c.tie_word_embeddings);

  // q_a_proj, q_b_proj, kv_a_proj_with_mqa, kv_b_proj, o_proj.
  const int64_t attn = D * Cq + Cq * H * (Dn + Dr) + D * (Ckv + Dr) + Ckv * H * (Dn + Dv) + H * Dv * D;
  const int64_t block_norms = 2 * D + Cq + Ckv;  // input/post_attention_layernorm, q_a/kv_a_layernorm
  const int64_t swiglu_F = 3 * D * F;
  const int64_t mtp_total = 2 * D + 2 * D * D + D  // enorm, hnorm, eh_proj, shared_head.norm
                            + block_norms + attn + E * swiglu_F + E * D + S * swiglu_F;
  const int64_t mtp_active = mtp_total - (E - K) * swiglu_F;

  const Model model(c);
  const ModelInfo info = model_info(model, run.train.batch_size, run.train.seq_len);
  EXPECT_EQ(info.embedding.total, V * D);
  EXPECT_EQ(info.attention.total, L * attn);
  EXPECT_EQ(info.dense_ffn.total, dense * 3 * D * I);
  EXPECT_EQ(info.shared_experts.total, moe_layers * S * swiglu_F);
  EXPECT_EQ(info.routed_experts.total, moe_layers * E * swiglu_F);
  EXPECT_EQ(info.routed_experts.active, moe_layers * K * swiglu_F);
  EXPECT_EQ(info.router.total, moe_layers * E * D);
  EXPECT_EQ(info.norms.total, L * block_norms + D);
  EXPECT_EQ(info.lm_head.total, V * D);
  EXPECT_EQ(info.mtp.total, depth * mtp_total);
  EXPECT_EQ(info.mtp.active, depth * mtp_active);
  EXPECT_EQ(info.mtp_routed_experts.total, depth * E * swiglu_F);
  EXPECT_EQ(info.other.total, 0);
  // Everything but the routed experts is active.
  for (const ParamCount* p : {&info.embedding, &info.attention, &info.dense_ffn, &info.shared_experts, &info.router,
                              &info.norms, &info.lm_head})
    EXPECT_EQ(p->active, p->total);
  const int64_t total = V * D + L * attn + dense * 3 * D * I + moe_layers * (S + E) * swiglu_F + moe_layers * E * D +
                        L * block_norms + D + V * D + depth * mtp_total;
  EXPECT_EQ(info.params.total, total);
  EXPECT_EQ(info.params.total, 60832);  // the numbers the preset's header states, worked out by hand
  EXPECT_EQ(info.params.active, total - moe_layers * (E - K) * swiglu_F - depth * (E - K) * swiglu_F);
  EXPECT_EQ(info.params.active, 42400);
  EXPECT_EQ(info.params.total, model.params().numel());  // and what the model declared
  EXPECT_EQ(info.buffers, (moe_layers + depth) * E);     // one aux-free bias per expert per MoE layer

  // Matmul parameters: everything but the embedding lookup and the norms, K of E experts, and the
  // LM head once per loss head.
  const int64_t matmul = L * attn + dense * 3 * D * I + moe_layers * (S + K) * swiglu_F + moe_layers * E * D +
                         depth * (2 * D * D + attn + (S + K) * swiglu_F + E * D) + (1 + depth) * V * D;
  EXPECT_EQ(info.matmul_params, matmul);
  EXPECT_DOUBLE_EQ(info.flops_matmul, 6.0 * static_cast<double>(matmul));

  // FP8 training's GEMMs: the matmuls but the routers and the LM heads; every Linear weight; and
  // the features in and out of each Linear a token passes (MLA: q_a D -> Cq, q_b Cq -> H(Dn+Dr),
  // kv_a D -> Ckv+Dr, kv_b Ckv -> H(Dn+Dv), o H Dv -> D; SwiGLU of width W: 2 x (D -> W) + W -> D).
  const int64_t fp8_matmul = matmul - moe_layers * E * D - depth * E * D - (1 + depth) * V * D;
  EXPECT_DOUBLE_EQ(info.cost.fp8_flops, 6.0 * static_cast<double>(fp8_matmul));
  EXPECT_EQ(info.cost.fp8_weights, L * attn + dense * 3 * D * I + moe_layers * (S + E) * swiglu_F +
                                       depth * (2 * D * D + attn + (S + E) * swiglu_F));
  const int64_t attn_in = D + Cq + D + Ckv + H * Dv, attn_out = Cq + H * (Dn + Dr) + Ckv + Dr + H * (Dn + Dv) + D;
  auto swiglu_in = [&](int64_t W) { return 2 * D + W; };
  auto swiglu_out = [&](int64_t W) { return 2 * W + D; };
  const int64_t moe_in = K * swiglu_in(F) + swiglu_in(S * F), moe_out = K * swiglu_out(F) + swiglu_out(S * F);
  EXPECT_EQ(info.cost.fp8_in, L * attn_in + dense * swiglu_in(I) + moe_layers * moe_in + depth * (2 * D + attn_in + moe_in));
  EXPECT_EQ(info.cost.fp8_out, L * attn_out + dense * swiglu_out(I) + moe_layers * moe_out + depth * (D + attn_out + moe_out));
  EXPECT_NE(format_model_info(c, info).find("FP8 training (train.precision = fp8"), std::string::npos);
}

// DeepSeek-V3's published shapes (examples/deepseek_v3.toml): the report's 671B parameters and 37B
// active per token (without the MTP module), counted by hand from the shapes and declared without
// allocating anything.
TEST(ModelInfo, DeepSeekV3ParametersByHand) {
  const RunConfig run = load_config(preset_path("deepseek_v3"));
  const ModelConfig& c = run.model;
  const int64_t V = 129280, D = 7168, L = 61, H = 128, Cq = 1536, Ckv = 512, Dn = 128, Dr = 64, Dv = 128;
  const int64_t I = 18432, F = 2048, E = 256, K = 8, dense = 3;
  ASSERT_EQ(c.vocab_size, V);
  ASSERT_EQ(c.hidden_size, D);
  ASSERT_EQ(c.num_hidden_layers, L);
  ASSERT_EQ(c.n_routed_experts, E);
  ASSERT_EQ(c.n_group, 8);
  ASSERT_EQ(c.topk_group, 4);
  const int64_t attn = D * Cq + Cq * H * (Dn + Dr) + D * (Ckv + Dr) + Ckv * H * (Dn + Dv) + H * Dv * D;
  const int64_t norms = 2 * D + Cq + Ckv;
  const int64_t expert = 3 * D * F;
  const int64_t moe = E * expert + E * D + expert;  // routed, gate, one shared
  const int64_t trunk = V * D + L * (attn + norms) + dense * 3 * D * I + (L - dense) * moe + D + V * D;
  const int64_t trunk_active = trunk - (L - dense) * (E - K) * expert;
  EXPECT_EQ(trunk, 671026404352);  // 671.0B: the report's 671B
  EXPECT_EQ(trunk_active, 37552282624);  // 37.6B: the report's 37B

  const Model model(c);  // declared only: 2.7 TB of f32 parameters are never allocated
  EXPECT_FALSE(model.params().allocated());
  const ModelInfo info = model_info(model, 1, 4096);
  const int64_t mtp = 2 * D + 2 * D * D + D + attn + norms + moe;  // enorm, hnorm, eh_proj, head norm, block
  EXPECT_EQ(info.params.total, trunk + mtp);
  EXPECT_EQ(info.params.total - info.mtp.total, trunk);
  EXPECT_EQ(info.params.active - info.mtp.active, trunk_active);
  EXPECT_EQ(info.kv_bytes, (Ckv + Dr) * 2);
}

TEST(ModelInfo, TiedEmbeddingsStillCostAHeadMatmul) {
  ModelConfig c = load_config(preset_path("tiny")).model;
  c.tie_word_embeddings = true;
  c.num_nextn_predict_layers = 0;
  const Model model(c);
  const ModelInfo info = model_info(model, 2, 16);
  EXPECT_EQ(info.lm_head.total, 0);
  EXPECT_EQ(info.mtp.total, 0);
  EXPECT_EQ(info.params.total, model.params().numel());
  const ModelInfo untied = [&] {
    ModelConfig u = c;
    u.tie_word_embeddings = false;
    return model_info(Model(u), 2, 16);
  }();
  EXPECT_EQ(untied.params.total - info.params.total, c.vocab_size * c.hidden_size);
  EXPECT_EQ(untied.matmul_params, info.matmul_params);  // the head multiplies either way
}

ModelConfig dense_mha() {
  ModelConfig c;
  c.vocab_size = 100;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.attention = AttentionKind::MHA;
  c.num_attention_heads = 4;  // head_dim 16
  c.ffn = FfnKind::Dense;
  c.intermediate_size = 96;
  c.num_nextn_predict_layers = 0;
  return c;
}

TEST(ModelInfo, DenseMhaFlopsByHand) {
  const ModelConfig c = dense_mha();
  const Model model(c);
  const int64_t T = 32;
  const ModelInfo info = model_info(model, 3, T);
  // Per layer: q, k, v, o = 4 x 64 x 64 = 16384; SwiGLU 3 x 64 x 96 = 18432. Head 100 x 64 = 6400.
  EXPECT_EQ(info.matmul_params, 2 * (16384 + 18432) + 6400);  // 76032
  EXPECT_DOUBLE_EQ(info.flops_matmul, 6.0 * 76032);           // 456192
  // Scores: QK^T and PV, 2 x T x (16 + 16) FLOP per token per head forward, x 3 for training,
  // x H = 4 x L = 2: 6 x 2 x 32 x 4 x 32 = 49152 for the whole square, half of it causal.
  EXPECT_DOUBLE_EQ(info.flops_attention_full, 49152.0);
  EXPECT_DOUBLE_EQ(info.flops_attention, 24576.0);
  EXPECT_DOUBLE_EQ(attention_flops_per_token(c, T), 24576.0);
  EXPECT_DOUBLE_EQ(info.flops_per_token, 456192.0 + 24576.0);
  // Parameters: the matmuls + the embedding + 2 norms per layer + the final norm.
  EXPECT_EQ(info.params.total, 76032 + 6400 + 2 * 2 * 64 + 64);
  EXPECT_EQ(info.params.active, info.params.total);
}

TEST(ModelInfo, KvCacheBytes) {
  // MLA (tiny): (Ckv 16 + Dr 4) x 2 bytes = 40; MHA with the same heads: H 2 x (Dn 8 + Dr 4) keys +
  // 2 x Dv 8 values = 40 numbers x 2 bytes = 80.
  const ModelConfig tiny = load_config(preset_path("tiny")).model;
  EXPECT_EQ(kv_cache_bytes_per_token_layer(tiny), 40);
  EXPECT_EQ(mha_kv_cache_bytes_per_token_layer(tiny), 80);
  // V2-Lite shapes: (512 + 64) x 2 = 1152 vs 16 x (128 + 64) + 16 x 128 = 5120 numbers = 10240 bytes.
  const ModelConfig v2 = load_config(preset_path("v2lite_mini")).model;
  EXPECT_EQ(kv_cache_bytes_per_token_layer(v2), 1152);
  EXPECT_EQ(mha_kv_cache_bytes_per_token_layer(v2), 10240);
  // MHA D 64, H 4: K and V of 4 heads x 16 = 128 numbers = 256 bytes; GQA with 2 kv heads: half.
  ModelConfig c = dense_mha();
  EXPECT_EQ(kv_cache_bytes_per_token_layer(c), 256);
  EXPECT_EQ(mha_kv_cache_bytes_per_token_layer(c), 256);
  c.attention = AttentionKind::GQA;
  c.num_key_value_heads = 2;
  EXPECT_EQ(kv_cache_bytes_per_token_layer(c), 128);
  EXPECT_EQ(mha_kv_cache_bytes_per_token_layer(c), 256);
}

TEST(ModelInfo, ActivationEstimateByHand) {
  const ModelConfig c = dense_mha();
  const ModelInfo info = model_info(Model(c), 3, 32);
  // A block: input 64, rstd 1, normed 64, attention (q 64, k 64, v 64, out 64, lse 4), h 64, rstd 1,
  // normed 64, SwiGLU gate/up/hidden 3 x 96.
  EXPECT_EQ(info.act_dense_layer, 64 + 1 + 64 + (4 * 64 + 4) + 64 + 1 + 64 + 288);  // 806
  EXPECT_EQ(info.act_moe_layer, 0);
  // The head: its input 64, rstd 1, normed 64, logits 100, lse, loss, ids, targets.
  EXPECT_EQ(info.act_head, 64 + 1 + 64 + 100 + 4);  // 233
  EXPECT_EQ(info.act_total, 2 * 806 + 233);
  EXPECT_DOUBLE_EQ(info.saved_bytes(), 4.0 * (2 * 806 + 233) * 3 * 32);
  EXPECT_DOUBLE_EQ(info.logits_bytes(), 4.0 * 100 * 3 * 32);
}

TEST(ModelInfo, EveryPresetAddsUp) {
  for (const char* name : {"tiny", "shakespeare_moe", "shakespeare_dense", "small", "v2lite_mini"}) {
    SCOPED_TRACE(name);
    const RunConfig run = load_config(preset_path(name));
    const Model model(run.model);
    const ModelInfo info = model_info(model, run.train.batch_size, run.train.seq_len);
    EXPECT_EQ(info.other.total, 0);
    EXPECT_EQ(info.params.total, model.params().numel());
    EXPECT_LE(info.params.active, info.params.total);
    EXPECT_LE(info.matmul_params,
              info.params.active + run.model.num_nextn_predict_layers * run.model.vocab_size * run.model.hidden_size);
    EXPECT_GT(info.flops_per_token, 6.0 * static_cast<double>(info.matmul_params));
    EXPECT_GT(info.activation_bytes(), info.logits_bytes());
    EXPECT_FALSE(format_model_info(run.model, info).empty());
  }
}

TEST(ModelInfo, ShakespeareBaselinesHaveTheSameActiveParameters) {
  const ModelConfig moe = load_config(preset_path("shakespeare_moe")).model;
  const ModelConfig dense = load_config(preset_path("shakespeare_dense")).model;
  const ModelInfo a = model_info(Model(moe), 1, 256), b = model_info(Model(dense), 1, 256);
  EXPECT_EQ(a.params.active, 774208);  // the numbers the presets' headers state
  EXPECT_EQ(a.params.total, 2150464);
  EXPECT_EQ(b.params.active, 774656);
  EXPECT_EQ(b.params.total, b.params.active);
  EXPECT_NEAR(static_cast<double>(b.params.active) / static_cast<double>(a.params.active), 1.0, 0.001);
}

}  // namespace
}  // namespace moelab
