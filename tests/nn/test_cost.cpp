// The layers' own cost (core/nn/cost.h) against what really happens: the parameters each layer
// reports against what the model declares, and the activation bytes against the arena's measured
// peak (Arena::peak()) after one forward + backward on the CPU, for every preset in examples/*.toml
// (so a new preset is covered the day it is added), for ablation variants of the tiny preset (GQA,
// partial RoPE, capacity drops, tied head, MTP depth 2, f64) and for the MoE layer alone on both
// expert paths. The count is an upper bound by construction (every allocation rounded up,
// dropless routing, every expert padded), so each check asserts peak <= predicted and predicted
// within 10% of the peak, the margin the CUDA arena is sized with (train/runtime.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "core/nn/model.h"
#include "core/nn/moe.h"
#include "core/rng.h"
#include "tests/nn/nn_harness.h"
#include "train/config_file.h"

namespace moelab {
namespace {

constexpr double kTolerance = 0.10;  // |predicted - peak| <= 10% of the peak

std::vector<std::string> preset_paths() {
  std::vector<std::string> paths;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(MOELAB_SOURCE_DIR) + "/examples"))
    if (entry.path().extension() == ".toml") paths.push_back(entry.path().string());
  std::sort(paths.begin(), paths.end());
  return paths;
}

// A preset at a size one test can afford. The arena's bytes are linear in the tokens of a step, so
// every preset runs at most kMaxTokens of them (the batch cut first). Parameters and gradients are
// f32 on the CPU (8 bytes a parameter), so presets above kMaxParams parameters (small: 576M,
// v2lite_mini: 2.25B) keep every per-token width (D, H, the MLA ranks and head dims, F,
// intermediate_size, K) and every switch, and lose counts: the layers (down to one dense layer,
// when the preset has one, and one MoE layer), the routed experts (K + 2, so that routing still
// chooses), the vocabulary and the sequence.
constexpr int64_t kMaxTokens = 512;
constexpr int64_t kMaxParams = 64'000'000;

RunConfig test_size(RunConfig run) {
  TrainConfig& t = run.train;
  t.batch_size = std::max<int64_t>(1, std::min(t.batch_size, kMaxTokens / t.seq_len));
  t.seq_len = std::min(t.seq_len, kMaxTokens / t.batch_size);
  ModelConfig& c = run.model;
  if (Model(c).params().numel() <= kMaxParams) return run;
  t.batch_size = 1;
  t.seq_len = std::min<int64_t>(t.seq_len, 32);
  c.first_k_dense_replace = std::min<int64_t>(c.first_k_dense_replace, 1);
  c.num_hidden_layers = std::min(c.num_hidden_layers, c.ffn == FfnKind::MoE ? c.first_k_dense_replace + 1 : 2);
  if (c.n_group == 1) c.n_routed_experts = std::min(c.n_routed_experts, c.num_experts_per_tok + 2);
  c.vocab_size = std::min<int64_t>(c.vocab_size, 8192);
  c.validate();
  return run;
}

// A preset whose per-token widths alone make even the test size too large for a test (DeepSeek-V3:
// D = 7168, 256 routed experts in 8 groups; its counts are checked by hand in test_model_info.cpp
// and planned by `moelab plan`, never allocated).
constexpr int64_t kMaxTestSizeParams = 1'000'000'000;
bool plan_only(const RunConfig& test_sized) { return Model(test_sized.model).params().numel() > kMaxTestSizeParams; }

struct Measured {
  int64_t predicted = 0;
  size_t peak = 0;
};

// One forward + backward of a fresh model of cfg on random tokens, in `dtype` on the CPU.
Measured measure(const ModelConfig& cfg, int64_t B, int64_t T, DType dtype = DType::F32, uint64_t seed = 7) {
  Model model(cfg);
  model.allocate(Device::CPU, dtype);
  // Random weights from the cheaper uniform draw: the arena depends on shapes and on which experts
  // get rows, not on the init's distribution, and the larger presets have 100M+ parameters.
  fill_uniform(model.params().flat_params(), seed, 0, -0.1f, 0.1f);
  Measured m;
  m.predicted = model.cost({B, T, dtype}).activation_bytes;
  // Room beyond the prediction, so that a count that is too low shows as a failed comparison
  // (with both numbers) rather than as a full arena.
  Arena arena(static_cast<size_t>(m.predicted) * 2 + (size_t{1} << 20), Device::CPU);
  const Context ctx{&arena, dtype, B, T};
  const Tensor tokens =
      testing::randint({B, T + 1 + cfg.num_nextn_predict_layers}, static_cast<int32_t>(cfg.vocab_size), seed + 1);
  Model::Saved saved;
  model.forward(ctx, tokens, saved);
  model.backward(ctx, saved);
  m.peak = arena.peak();
  return m;
}

void expect_close(const Measured& m, const std::string& what) {
  const double predicted = static_cast<double>(m.predicted), peak = static_cast<double>(m.peak);
  std::printf("[ cost ] %-28s predicted %14.0f B, arena peak %14.0f B (%+.3f%%)\n", what.c_str(), predicted, peak,
              100.0 * (predicted - peak) / peak);
  EXPECT_LE(peak, predicted) << what << ": the arena's peak is above the layers' count";
  EXPECT_LE(predicted - peak, kTolerance * peak) << what << ": the layers' count is more than 10% above the peak";
}

TEST(Cost, EveryPresetsParametersAreTheDeclaredOnes) {
  for (const std::string& path : preset_paths()) {
    SCOPED_TRACE(path);
    const ModelConfig cfg = load_config(path).model;
    const Model model(cfg);
    const LayerCost cost = model.cost({1, 16});
    EXPECT_EQ(cost.params, model.params().numel());
    EXPECT_LE(cost.active_params, cost.params);
    // Every matmul weight is a parameter, but the LM head multiplies once per loss head.
    EXPECT_LE(cost.matmul_params, cost.active_params + cfg.num_nextn_predict_layers * cfg.vocab_size * cfg.hidden_size);
    // The MTP modules are not used at inference: the cache is the trunk's.
    const int64_t per_layer = model.blocks().front().attention_cost({1, 1}).kv_cache_elements;
    EXPECT_EQ(cost.kv_cache_elements, cfg.num_hidden_layers * per_layer);
  }
}

// One test per preset (ctest runs them side by side), named after the file.
class PresetCost : public ::testing::TestWithParam<std::string> {};

TEST_P(PresetCost, ActivationBytesMatchTheArenaPeak) {
  const RunConfig run = test_size(load_config(GetParam()));
  const std::string name = std::filesystem::path(GetParam()).stem().string();
  if (plan_only(run)) GTEST_SKIP() << name << " is too large to allocate even at test size";
  expect_close(measure(run.model, run.train.batch_size, run.train.seq_len), name);
}

// Generation's arena (Model::decode_arena_bytes, the layers' decode_bytes): a prefill of the
// preset's batch, then one token per sequence.
TEST_P(PresetCost, DecodeBytesMatchTheArenaPeak) {
  const RunConfig run = test_size(load_config(GetParam()));
  const std::string name = std::filesystem::path(GetParam()).stem().string();
  if (plan_only(run)) GTEST_SKIP() << name << " is too large to allocate even at test size";
  const ModelConfig& cfg = run.model;
  const int64_t B = run.train.batch_size, T = run.train.seq_len;
  Model model(cfg);
  model.allocate(Device::CPU, DType::F32);
  fill_uniform(model.params().flat_params(), 11, 0, -0.1f, 0.1f);
  Model::KVCache cache = model.new_cache(B, T + 1);
  for (const int64_t n : {T, int64_t{1}}) {
    const int64_t predicted = static_cast<int64_t>(model.decode_arena_bytes(B * n));
    Arena arena(static_cast<size_t>(predicted) * 2 + (size_t{1} << 20), Device::CPU);
    const Tensor ids = testing::randint({B, n}, static_cast<int32_t>(cfg.vocab_size), 12 + n);
    const Tensor logits = Tensor::empty({B * n, cfg.vocab_size}, DType::F32);
    model.decode(Context{&arena, DType::F32, B, n}, ids, cache.length, cache, logits);
    const Measured m{predicted, arena.peak()};
    if (n > 1) {
      expect_close(m, name + " prefill");
    } else {  // a handful of rows: a few alignment units of slack weigh more than 10%
      EXPECT_LE(m.peak, static_cast<size_t>(m.predicted)) << name << " one token";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Examples, PresetCost, ::testing::ValuesIn(preset_paths()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return std::filesystem::path(info.param).stem().string();
                         });

TEST(Cost, EveryPresetIsMeasured) { EXPECT_GE(preset_paths().size(), 5u); }

TEST(Cost, ActivationBytesOfAblationsMatchTheArenaPeak) {
  const ModelConfig tiny = load_config(std::string(MOELAB_SOURCE_DIR) + "/examples/tiny.toml").model;
  struct Variant {
    const char* name;
    void (*apply)(ModelConfig&);
  };
  const Variant variants[] = {
      {"gqa", [](ModelConfig& c) {
         c.attention = AttentionKind::GQA;
         c.num_key_value_heads = 1;
       }},
      {"mha partial rope", [](ModelConfig& c) {
         c.attention = AttentionKind::MHA;
         c.partial_rotary_factor = 0.5;
       }},
      {"capacity 1.0", [](ModelConfig& c) { c.capacity_factor = 1.0; }},
      {"tied, mtp 2", [](ModelConfig& c) {
         c.tie_word_embeddings = true;
         c.num_nextn_predict_layers = 2;
       }},
      {"no shared, softmax", [](ModelConfig& c) {
         c.n_shared_experts = 0;
         c.scoring_func = ScoreFunc::Softmax;
       }},
      {"dense", [](ModelConfig& c) { c.ffn = FfnKind::Dense; }},
  };
  for (const Variant& v : variants) {
    SCOPED_TRACE(v.name);
    ModelConfig c = tiny;
    v.apply(c);
    c.validate();
    expect_close(measure(c, 3, 11), std::string("tiny, ") + v.name);
  }
  expect_close(measure(tiny, 2, 9, DType::F64), "tiny, f64");
}

// The MoE layer alone on both expert paths: its count covers what it allocates itself (x, y and
// their gradients are the caller's).
TEST(Cost, MoEOnBothExpertPathsMatchesTheArenaPeak) {
  const ModelConfig tiny = load_config(std::string(MOELAB_SOURCE_DIR) + "/examples/tiny.toml").model;
  for (const bool naive : {false, true}) {
    SCOPED_TRACE(naive ? "naive" : "grouped");
    ParamBuffer params, buffers;
    MoE moe(params, buffers, "model.layers.1.mlp", tiny);
    params.allocate(Device::CPU, DType::F32);
    params.initialize(3);
    buffers.allocate(Device::CPU, DType::F32, /*with_grads=*/false);
    moe.set_naive(naive);
    const int64_t B = 4, T = 16, N = B * T, D = tiny.hidden_size;  // the preset's step
    const Tensor x = testing::randn({N, D}, DType::F32, 4), grad_y = testing::randn({N, D}, DType::F32, 5);
    const Tensor y = Tensor::empty({N, D}, DType::F32), grad_x = Tensor::empty({N, D}, DType::F32);
    const int64_t predicted = moe.cost({B, T, DType::F32}).activation_bytes;
    Arena arena(static_cast<size_t>(predicted) * 2 + (size_t{1} << 20), Device::CPU);
    const Context ctx{&arena, DType::F32, B, T};
    MoE::Saved saved;
    moe.forward(ctx, x, y, saved);
    moe.backward(ctx, saved, grad_y, 1.0, grad_x);
    expect_close({predicted, arena.peak()}, naive ? "MoE naive" : "MoE grouped");
  }
}

}  // namespace
}  // namespace moelab
