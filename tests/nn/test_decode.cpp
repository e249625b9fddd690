// Generation with a KV cache (core/nn/decode.cpp) against the training forward: a prefill of a few
// tokens, then steps of one (and of two) tokens, must give Model::forward's logits at every
// position, in f64 to ~1e-12 and in f32 to ~1e-5, for MLA with and without query compression
// (absorbed attention over the latent cache), MHA with partial RoPE and a tied head, GQA, MoE
// (sigmoid + bias + shared experts, softmax, group-limited) and dense FFNs, with MTP modules present
// (unused at inference). Also: the cache's size per token (MLA: Ckv + Dr per layer), MoE decode is
// dropless whatever the capacity factor, the arena bound holds, and misuse is reported.
#include <gtest/gtest.h>

#include <vector>

#include "core/nn/model.h"
#include "core/ops/columns.h"
#include "core/rng.h"
#include "tests/nn/nn_harness.h"

namespace moelab {
namespace {

ModelConfig base_config() { return testing::tiny_model_config(); }

// Random weights with norm weights away from 1 and a nonzero expert bias, so ignoring either shows.
void init_model(Model& model, DType dtype, uint64_t seed) {
  model.allocate(Device::CPU, dtype);
  model.initialize(seed);
  for (const auto& e : model.params().entries())
    if (e.spec.init == Init::Ones) fill_normal(model.params().param(e.spec.name), seed + 1, e.offset, 1.0, 0.3);
  for (const auto& e : model.buffers().entries())
    fill_normal(model.buffers().param(e.spec.name), seed + 2, e.offset, 0.0, 0.05);
}

// Model::forward's main-head logits [B*T, V] for tokens [B, T + 1 + D_mtp].
Tensor forward_logits(const Model& model, DType dtype, const Tensor& tokens, int64_t T) {
  const int64_t B = tokens.size(0);
  Arena arena(32 << 20, Device::CPU);
  const Context ctx{&arena, dtype, B, T};
  Model::Saved s;
  model.forward(ctx, tokens, s);
  return s.head.logits.to(DType::F64);
}

// The logits of positions [0, T) from decode calls of `chunks` tokens each (the first is the
// prefill), gathered into forward's [B*T, V] row order. The arenas are exactly decode_arena_bytes:
// a call that needed more would throw.
Tensor decode_logits(const Model& model, DType dtype, const Tensor& tokens, const std::vector<int64_t>& chunks) {
  const int64_t B = tokens.size(0), V = model.config().vocab_size;
  int64_t T = 0;
  for (int64_t n : chunks) T += n;
  Model::KVCache cache = model.new_cache(B, T);
  Tensor all = Tensor::empty({B * T, V}, DType::F64);
  int64_t pos = 0;
  for (int64_t n : chunks) {
    Arena arena(model.decode_arena_bytes(B * n), Device::CPU);
    const Context ctx{&arena, dtype, B, n};
    Tensor ids = Tensor::empty({B, n}, DType::I32);
    slice_columns(Exec{}, tokens, pos, ids);  // tokens[:, pos : pos + n]
    Tensor logits = Tensor::empty({B * n, V}, dtype);
    model.decode(ctx, ids, pos, cache, logits);
    EXPECT_LE(arena.peak(), model.decode_arena_bytes(B * n));
    const Tensor l64 = logits.to(DType::F64);
    for (int64_t b = 0; b < B; ++b)
      all.slice(b * T + pos, b * T + pos + n).copy_from(l64.slice(b * n, (b + 1) * n));
    pos += n;
    EXPECT_EQ(cache.length, pos);
  }
  return all;
}

void check_decode(const ModelConfig& cfg, DType dtype, int64_t B, const std::vector<int64_t>& chunks, uint64_t seed,
                  double tol) {
  cfg.validate();
  Model model(cfg);
  init_model(model, dtype, seed);
  int64_t T = 0;
  for (int64_t n : chunks) T += n;
  const Tensor tokens = testing::randint({B, T + 1 + cfg.num_nextn_predict_layers}, static_cast<int32_t>(cfg.vocab_size),
                                         seed + 3);
  const Tensor expected = forward_logits(model, dtype, tokens, T);
  EXPECT_TRUE(testing::close(decode_logits(model, dtype, tokens, chunks), expected, tol, tol));
}

// Prefill 3, then 1, 1, 2, 1 tokens: cached steps and a multi-token chunk after the prefill.
const std::vector<int64_t> kChunks = {3, 1, 1, 2, 1};

TEST(Decode, MlaQueryCompressionMoeSigmoidBiasMtpF64) {
  ModelConfig c = base_config();
  c.q_lora_rank = 5;
  c.first_k_dense_replace = 1;
  c.routed_scaling_factor = 2.5;
  c.num_nextn_predict_layers = 1;
  check_decode(c, DType::F64, 2, kChunks, 100, 1e-11);
}

TEST(Decode, MlaNoQueryCompressionDenseF64) {
  ModelConfig c = base_config();
  c.q_lora_rank = 0;
  c.ffn = FfnKind::Dense;
  check_decode(c, DType::F64, 2, kChunks, 200, 1e-11);
}

TEST(Decode, MlaMoeSoftmaxGroupsF64) {
  ModelConfig c = base_config();
  c.scoring_func = ScoreFunc::Softmax;
  c.norm_topk_prob = false;
  c.aux_free_bias = false;
  c.n_shared_experts = 0;
  c.n_group = 2;
  c.topk_group = 1;
  c.num_hidden_layers = 3;
  check_decode(c, DType::F64, 1, kChunks, 250, 1e-11);
}

TEST(Decode, MhaPartialRopeDenseTiedF64) {
  ModelConfig c = base_config();
  c.attention = AttentionKind::MHA;
  c.partial_rotary_factor = 0.5;
  c.ffn = FfnKind::Dense;
  c.tie_word_embeddings = true;
  check_decode(c, DType::F64, 2, kChunks, 300, 1e-11);
}

TEST(Decode, GqaMoeF64) {
  ModelConfig c = base_config();
  c.attention = AttentionKind::GQA;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  check_decode(c, DType::F64, 2, kChunks, 400, 1e-11);
}

TEST(Decode, OneTokenAtATimeFromTheStartF64) {
  ModelConfig c = base_config();
  c.q_lora_rank = 5;
  check_decode(c, DType::F64, 1, {1, 1, 1, 1, 1, 1}, 500, 1e-11);
}

TEST(Decode, WholeSequenceInOneCallF64) {
  check_decode(base_config(), DType::F64, 3, {7}, 600, 1e-11);
}

// f32: the absorbed MLA sums the same products in another order than forward's expanded keys
// and values; the logits here are O(10).
TEST(Decode, MlaMoeF32) {
  ModelConfig c = base_config();
  c.q_lora_rank = 5;
  check_decode(c, DType::F32, 2, kChunks, 700, 2e-5);
}

TEST(Decode, GqaDenseF32) {
  ModelConfig c = base_config();
  c.attention = AttentionKind::GQA;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 1;
  c.ffn = FfnKind::Dense;
  check_decode(c, DType::F32, 2, kChunks, 800, 2e-5);
}

// A capacity factor drops assignments in training; decode routes every token to its K experts, so
// its logits are those of the same weights trained dropless.
TEST(Decode, MoeIsDroplessAtInference) {
  ModelConfig dropless = base_config();
  ModelConfig capped = dropless;
  capped.capacity_factor = 0.5;
  Model reference(dropless), model(capped);
  init_model(reference, DType::F64, 900);
  init_model(model, DType::F64, 900);
  const int64_t T = 8;
  const Tensor tokens = testing::randint({2, T + 1}, static_cast<int32_t>(dropless.vocab_size), 903);
  {  // the capacity does drop in the training forward of this model
    Arena arena(32 << 20, Device::CPU);
    Model::Saved s;
    model.forward(Context{&arena, DType::F64, 2, T}, tokens, s);
    int64_t dropped = 0;
    for (const MoEStats& st : model.moe_stats(s)) dropped += st.dropped;
    ASSERT_GT(dropped, 0);
  }
  EXPECT_TRUE(testing::close(decode_logits(model, DType::F64, tokens, {3, 1, 4}),
                             forward_logits(reference, DType::F64, tokens, T), 1e-11, 1e-11));
}

TEST(Decode, CacheBytesPerToken) {
  ModelConfig c = base_config();
  c.num_hidden_layers = 3;
  {
    Model model(c);
    model.allocate(Device::CPU, DType::F32);
    const Model::KVCache cache = model.new_cache(2, 5);
    // MLA: the latent and the rope key, nothing per head.
    EXPECT_EQ(cache.elements_per_token(), (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers);
    EXPECT_EQ(cache.bytes_per_token(), (c.kv_lora_rank + c.qk_rope_head_dim) * 4 * c.num_hidden_layers);
    EXPECT_EQ(cache.layers[0].mla.ckv.shape(), Shape({2, 5, c.kv_lora_rank}));
    EXPECT_EQ(cache.layers[0].mla.kr.shape(), Shape({2, 5, c.qk_rope_head_dim}));
    EXPECT_FALSE(cache.layers[0].gqa.k.defined());
  }
  {
    c.attention = AttentionKind::GQA;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    Model model(c);
    model.allocate(Device::CPU, DType::F32);
    // k and v of Hkv heads of hidden_size / H dims.
    EXPECT_EQ(model.new_cache(1, 5).bytes_per_token(), 2 * 2 * (8 / 4) * 4 * c.num_hidden_layers);
  }
}

TEST(Decode, Misuse) {
  const ModelConfig c = base_config();
  Model model(c);
  init_model(model, DType::F64, 1000);
  Arena arena(1 << 20, Device::CPU);
  const Context ctx{&arena, DType::F64, 1, 2};
  Tensor ids = testing::randint({1, 2}, static_cast<int32_t>(c.vocab_size), 1001);
  Tensor logits = Tensor::empty({2, c.vocab_size}, DType::F64);
  Model::KVCache cache = model.new_cache(1, 4);
  testing::expect_error([&] { model.decode(ctx, ids, 1, cache, logits); }, "the cache holds positions [0, 0)");
  model.decode(ctx, ids, 0, cache, logits);
  model.decode(ctx, ids, 2, cache, logits);
  testing::expect_error([&] { model.decode(ctx, ids, 4, cache, logits); }, "exceed the cache's capacity of 4");
  testing::expect_error([&] { model.new_cache(1, c.max_position_embeddings + 1); }, "max_position_embeddings = 16");
}

}  // namespace
}  // namespace moelab
