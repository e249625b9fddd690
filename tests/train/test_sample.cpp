// Generation (train/sample.h) on randomly initialised tiny models in f32, as `moelab sample` runs:
// greedy tokens with the KV cache equal those without it and the argmax of Model::forward's logits
// (independent of the decode path), with a top-1 margin asserted at every step so that equality is
// not luck; sampling is fixed by the seed; top-k = 1 and a tiny top-p are greedy; sample_token
// against hand-computed distributions; the context limit; the KV-cache size report; and a
// checkpoint saved and loaded back generates the same tokens.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <unistd.h>

#include "core/ops/columns.h"
#include "tests/harness.h"
#include "train/checkpoint.h"
#include "train/sample.h"

namespace moelab {
namespace {

ModelConfig tiny_config(AttentionKind attention) {
  ModelConfig c;
  c.vocab_size = 29;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.max_position_embeddings = 40;
  c.initializer_range = 0.5;  // large weights: well-separated logits, no near-ties between paths
  c.attention = attention;
  c.num_attention_heads = 2;
  c.q_lora_rank = 6;
  c.kv_lora_rank = 8;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 4;
  c.num_key_value_heads = attention == AttentionKind::GQA ? 1 : 2;
  c.intermediate_size = 24;
  c.first_k_dense_replace = 1;
  c.moe_intermediate_size = 8;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.num_nextn_predict_layers = 1;  // present in the model, unused by generation
  c.validate();
  return c;
}

struct TinyModel {
  explicit TinyModel(const ModelConfig& c, uint64_t seed = 1) : model(c) {
    model.allocate(Device::CPU, DType::F32);
    model.initialize(seed);
  }
  Model model;
};

const std::vector<int32_t> kPrompt = {3, 17, 0, 11, 25};

SampleOptions greedy(int64_t max_new) {
  SampleOptions o;
  o.max_new_tokens = max_new;
  o.temperature = 0;
  return o;
}

// Model::forward's main-head logits [T, V] of one sequence (the training path, not decode).
Tensor forward_logits(const Model& model, const std::vector<int32_t>& seq) {
  const int64_t T = static_cast<int64_t>(seq.size()), depth = model.config().num_nextn_predict_layers;
  Tensor tokens = Tensor::zeros({1, T + 1 + depth}, DType::I32);  // the targets past T are dummies
  std::copy(seq.begin(), seq.end(), tokens.data<int32_t>());
  Arena arena(64 << 20, Device::CPU);
  Model::Saved s;
  model.forward(Context{&arena, DType::F32, 1, T}, tokens, s);
  return s.head.logits.to(DType::F64);
}

// Greedy with and without the cache; both must be forward's argmax at every step, each step's
// top-1 margin well above the f32 differences between the paths.
void check_greedy(const ModelConfig& cfg) {
  TinyModel m(cfg);
  SampleOptions opt = greedy(20);
  SampleStats cached_stats, plain_stats;
  const std::vector<int32_t> cached = generate(m.model, kPrompt, opt, &cached_stats);
  opt.use_cache = false;
  const std::vector<int32_t> plain = generate(m.model, kPrompt, opt, &plain_stats);
  ASSERT_EQ(cached.size(), 20u);
  EXPECT_EQ(cached, plain);
  EXPECT_EQ(cached_stats.new_tokens, 20);
  EXPECT_FALSE(cached_stats.context_full);

  std::vector<int32_t> seq = kPrompt;
  seq.insert(seq.end(), cached.begin(), cached.end() - 1);  // every position that predicted a token
  const Tensor logits = forward_logits(m.model, seq);
  const int64_t V = cfg.vocab_size, P = static_cast<int64_t>(kPrompt.size());
  std::vector<int32_t> argmax;
  double margin = 1e300;
  for (int64_t t = P - 1; t < static_cast<int64_t>(seq.size()); ++t) {
    std::vector<double> row(logits.data<double>() + t * V, logits.data<double>() + (t + 1) * V);
    const auto best = std::max_element(row.begin(), row.end());
    argmax.push_back(static_cast<int32_t>(best - row.begin()));
    const double top = *best;
    *best = -1e300;
    margin = std::min(margin, top - *std::max_element(row.begin(), row.end()));
  }
  EXPECT_EQ(cached, argmax);
  // The sampler runs in f32 and these logits in f64: they differ by ~1e-6 on this model, so a margin
  // above 2e-5 means greedy's choice is not a rounding accident (the exact value depends on the
  // CPU's GEMM kernels, which -march=native picks).
  EXPECT_GT(margin, 2e-5) << "a near-tie between the two most likely tokens: choose another seed";
  // Not a constant sequence: the test would be weak if every step gave the same token.
  EXPECT_GT(std::set<int32_t>(cached.begin(), cached.end()).size(), 2u);
}

TEST(Sample, GreedyCachedEqualsUncachedAndForwardMla) { check_greedy(tiny_config(AttentionKind::MLA)); }
TEST(Sample, GreedyCachedEqualsUncachedAndForwardMha) { check_greedy(tiny_config(AttentionKind::MHA)); }
TEST(Sample, GreedyCachedEqualsUncachedAndForwardGqa) { check_greedy(tiny_config(AttentionKind::GQA)); }

TEST(Sample, SeedFixesTheSample) {
  TinyModel m(tiny_config(AttentionKind::MLA));
  SampleOptions opt;
  opt.max_new_tokens = 30;
  opt.temperature = 2.0;  // flat enough that two seeds disagree somewhere
  opt.top_k = 20;
  opt.top_p = 0.95;
  opt.seed = 7;
  const std::vector<int32_t> a = generate(m.model, kPrompt, opt), b = generate(m.model, kPrompt, opt);
  EXPECT_EQ(a, b);
  opt.use_cache = false;
  EXPECT_EQ(generate(m.model, kPrompt, opt), a);
  opt.use_cache = true;
  opt.seed = 8;
  EXPECT_NE(generate(m.model, kPrompt, opt), a);
}

TEST(Sample, TopKOneAndTinyTopPAreGreedy) {
  TinyModel m(tiny_config(AttentionKind::MLA));
  const std::vector<int32_t> expected = generate(m.model, kPrompt, greedy(15));
  SampleOptions opt;
  opt.max_new_tokens = 15;
  opt.temperature = 1.5;
  opt.top_k = 1;
  EXPECT_EQ(generate(m.model, kPrompt, opt), expected);
  opt.top_k = 0;
  opt.top_p = 1e-9;
  EXPECT_EQ(generate(m.model, kPrompt, opt), expected);
}

TEST(Sample, SampleTokenByHand) {
  // p = [0.1, 0.2, 0.3, 0.4] at temperature 1: most likely first, the CDF is 0.4, 0.7, 0.9, 1.
  const std::vector<double> logits = {std::log(1.0), std::log(2.0), std::log(3.0), std::log(4.0)};
  SampleOptions o;
  const std::vector<std::pair<double, int32_t>> full = {{0.0, 3}, {0.39, 3}, {0.41, 2}, {0.69, 2}, {0.71, 1},
                                                         {0.89, 1}, {0.91, 0}, {0.999, 0}};
  for (auto [u, id] : full) EXPECT_EQ(sample_token(logits, o, u), id) << "u " << u;
  // top-k 2 keeps ids 3 and 2: renormalised 4/7, 3/7.
  o.top_k = 2;
  for (auto [u, id] : std::vector<std::pair<double, int32_t>>{{0.5, 3}, {0.56, 3}, {0.58, 2}, {0.999, 2}})
    EXPECT_EQ(sample_token(logits, o, u), id) << "top-k 2, u " << u;
  // top-p: 0.41 needs ids 3 and 2 (0.4 < 0.41 <= 0.7), 0.39 only id 3.
  o.top_k = 0;
  o.top_p = 0.41;
  EXPECT_EQ(sample_token(logits, o, 0.58), 2);
  o.top_p = 0.39;
  EXPECT_EQ(sample_token(logits, o, 0.999), 3);
  // Temperature 0.5 squares the probabilities: [1, 4, 9, 16] / 30, so the CDF starts at 16/30 = 0.533.
  o.top_p = 1;
  o.temperature = 0.5;
  EXPECT_EQ(sample_token(logits, o, 0.53), 3);
  EXPECT_EQ(sample_token(logits, o, 0.54), 2);
  // Greedy ties go to the lower id.
  o.temperature = 0;
  EXPECT_EQ(sample_token({1.0, 5.0, 2.0, 5.0}, o, 0.9), 1);
}

TEST(Sample, BadOptionsAndInputs) {
  TinyModel m(tiny_config(AttentionKind::MLA));
  SampleOptions o;
  o.top_p = 0;
  testing::expect_error([&] { generate(m.model, kPrompt, o); }, "top_p is 0");
  o = SampleOptions();
  o.temperature = -1;
  testing::expect_error([&] { generate(m.model, kPrompt, o); }, "temperature is -1");
  o = SampleOptions();
  testing::expect_error([&] { generate(m.model, {}, o); }, "the prompt is empty");
  testing::expect_error([&] { generate(m.model, {3, 29}, o); }, "prompt token 1 is 29");
  testing::expect_error([&] { generate(m.model, std::vector<int32_t>(41, 1), o); },
                        "more than max_position_embeddings = 40");
  testing::expect_error([&] { sample_token({0.0, std::nan("")}, o, 0.5); }, "logit 1 is nan");
}

TEST(Sample, VocabLimitAndContextLimit) {
  TinyModel m(tiny_config(AttentionKind::MLA));
  SampleOptions o;
  o.max_new_tokens = 100;
  o.temperature = 3.0;
  o.vocab_limit = 5;
  SampleStats s;
  const std::vector<int32_t> out = generate(m.model, kPrompt, o, &s);
  // The sequence stops at max_position_embeddings = 40 tokens.
  EXPECT_EQ(out.size(), 40u - kPrompt.size());
  EXPECT_TRUE(s.context_full);
  EXPECT_EQ(s.new_tokens, 35);
  for (int32_t id : out) EXPECT_LT(id, 5);
}

TEST(Sample, KvCacheReport) {
  const ModelConfig mla = tiny_config(AttentionKind::MLA);
  TinyModel m(mla);
  SampleStats s;
  generate(m.model, kPrompt, greedy(2), &s);
  // MLA caches ckv and rope(kr): (Ckv + Dr) x 4 B in f32 per layer.
  EXPECT_EQ(s.kv_elements_per_token * 4, (mla.kv_lora_rank + mla.qk_rope_head_dim) * 4 * mla.num_hidden_layers);
  EXPECT_EQ(s.kv_dtype, DType::F32);
  const std::string line = format_kv_cache(mla, s);
  EXPECT_NE(line.find("KV cache: 96 bytes/token (MLA latent Ckv + rope key Dr per layer: (8 + 4) x 4 B (f32) = 48 B, "
                      "x 2 layers); 48 bytes/token in bf16; MHA with these heads would cache 192 (2.0x)"),
            std::string::npos)
      << line;
  const ModelConfig gqa = tiny_config(AttentionKind::GQA);
  TinyModel g(gqa);
  generate(g.model, kPrompt, greedy(2), &s);
  EXPECT_EQ(s.kv_elements_per_token, 2 * 1 * 8 * 2);  // k and v, Hkv 1, head_dim 16 / 2, 2 layers
  EXPECT_NE(format_kv_cache(gqa, s).find("KV cache: 128 bytes/token (gqa keys and values per layer: 2 x Hkv 1 x "
                                         "head_dim 8 x 4 B (f32) = 64 B, x 2 layers); 64 bytes/token in bf16"),
            std::string::npos);
}

TEST(Sample, CheckpointRoundTrip) {
  namespace fs = std::filesystem;
  const fs::path run = fs::path(::testing::TempDir()) / ("moelab_sample_" + std::to_string(::getpid()));
  fs::remove_all(run);
  const Tokenizer tok = Tokenizer::build_char("the quick brown fox jumps over the lazy dog.\n");
  RunConfig cfg;
  cfg.model = tiny_config(AttentionKind::MLA);
  cfg.model.vocab_size = tok.vocab_size();
  cfg.train.seq_len = 16;
  TinyModel m(cfg.model);
  TrainerState state;
  state.step = 3;
  save_checkpoint(run.string(), cfg, m.model, nullptr, &tok, state, 0);
  const LoadedCheckpoint ck = load_checkpoint(latest_checkpoint(run.string()));
  ASSERT_TRUE(ck.tokenizer);
  const std::vector<int32_t> prompt = ck.tokenizer->encode("the ");
  EXPECT_EQ(generate(*ck.model, prompt, greedy(12)), generate(m.model, prompt, greedy(12)));
  fs::remove_all(run);
}

}  // namespace
}  // namespace moelab
