// Whole-model gradient checks in double: every parameter tensor of the model (embedding, each
// block, the MTP modules, the head) against central finite differences of the TOTAL loss (main
// cross-entropy + weighted MTP losses + balance terms), on tiny configs that cover MLA with and
// without query compression, MHA with a tied head, GQA, MoE with sigmoid + bias + shared experts,
// softmax + sequence/batch balance losses + z-loss, and MTP depth 1 and 2.
// A finite-difference step must not flip an expert choice, so every test asserts the routing
// margin (gap between the K-th and (K+1)-th selection score of every token in every MoE layer).
#include <gtest/gtest.h>

#include <algorithm>

#include "core/nn/model.h"
#include "core/rng.h"
#include "tests/nn/nn_harness.h"

namespace moelab {
namespace {

ModelConfig base_config() { return testing::tiny_model_config(); }

// The smallest gap, over tokens and MoE layers, between the K-th and (K+1)-th selection score.
double routing_margin(const Model& model, const Model::Saved& s) {
  const ModelConfig& c = model.config();
  std::vector<const Block::Saved*> blocks;
  for (const auto& b : s.blocks) blocks.push_back(&b);
  for (const auto& m : s.mtp) blocks.push_back(&m.module.block);
  double margin = 1e300;
  size_t moe_index = 0;
  const std::vector<int64_t> layers = model.moe_layers();
  for (const Block::Saved* b : blocks) {
    if (!b->moe.scores.defined()) continue;
    const Tensor& scores = b->moe.scores;
    Tensor bias;
    if (c.aux_free_bias) {
      const std::string name = "model.layers." + std::to_string(layers[moe_index]) + ".mlp.gate.e_score_correction_bias";
      bias = model.buffers().param(name);
    }
    ++moe_index;
    const int64_t N = scores.size(0), E = scores.size(1), K = c.num_experts_per_tok;
    for (int64_t n = 0; n < N; ++n) {
      std::vector<double> sel(E);
      for (int64_t e = 0; e < E; ++e) sel[e] = scores.data<double>()[n * E + e] + (bias.defined() ? bias.data<double>()[e] : 0.0);
      std::sort(sel.begin(), sel.end(), std::greater<double>());
      margin = std::min(margin, sel[K - 1] - sel[K]);
    }
  }
  return margin;
}

void check_model(const ModelConfig& cfg, int64_t B, int64_t T, uint64_t seed) {
  Model model(cfg);
  model.allocate(Device::CPU, DType::F64);
  model.initialize(seed);
  // Norm weights away from 1 and a nonzero expert bias, so that ignoring either shows.
  for (const auto& e : model.params().entries())
    if (e.spec.init == Init::Ones) fill_normal(model.params().param(e.spec.name), seed + 1, e.offset, 1.0, 0.3);
  for (const auto& e : model.buffers().entries()) fill_normal(model.buffers().param(e.spec.name), seed + 2, e.offset, 0.0, 0.05);
  Tensor tokens = testing::randint({B, T + 1 + cfg.num_nextn_predict_layers}, static_cast<int32_t>(cfg.vocab_size), seed + 3);
  Arena arena(16 << 20, Device::CPU);
  const Context ctx{&arena, DType::F64, B, T};
  auto loss = [&] {
    arena.reset();
    Model::Saved s;
    model.forward(ctx, tokens, s);
    return model.read_losses(ctx, s).total;
  };
  auto backward = [&] {
    arena.reset();
    Model::Saved s;
    model.forward(ctx, tokens, s);
    const Model::Losses l = model.read_losses(ctx, s);
    if (cfg.ffn == FfnKind::MoE) {
      const double margin = routing_margin(model, s);
      EXPECT_GT(margin, 1e-3) << "a top-k tie within reach of the finite-difference step: choose another seed";
    }
    EXPECT_EQ(l.mtp.size(), static_cast<size_t>(cfg.num_nextn_predict_layers));
    model.backward(ctx, s);
  };
  // 6 elements of every parameter tensor (all of the small ones).
  EXPECT_TRUE(testing::check_param_grads(model.params(), loss, backward, testing::kGradAtol, testing::kGradRtol, 6));
}

TEST(ModelGrad, MlaQueryCompressionMoeSigmoidBiasSharedMtp2) {
  ModelConfig c = base_config();
  c.q_lora_rank = 5;
  c.first_k_dense_replace = 1;
  c.routed_scaling_factor = 2.5;
  c.seq_aux_loss_alpha = 0.1;
  c.num_nextn_predict_layers = 2;
  c.validate();
  check_model(c, 2, 3, 100);
}

TEST(ModelGrad, MlaNoQueryCompressionMoeSoftmaxBalanceLossesMtp1) {
  ModelConfig c = base_config();
  c.q_lora_rank = 0;
  c.scoring_func = ScoreFunc::Softmax;
  c.norm_topk_prob = false;
  c.aux_free_bias = false;
  c.n_shared_experts = 0;
  c.seq_aux_loss_alpha = 0.2;
  c.aux_loss_alpha = 0.1;
  c.router_z_loss_coef = 0.05;
  c.num_nextn_predict_layers = 1;
  check_model(c, 1, 4, 200);
}

TEST(ModelGrad, MhaDenseTiedMtp1) {
  ModelConfig c = base_config();
  c.attention = AttentionKind::MHA;
  c.partial_rotary_factor = 0.5;
  c.ffn = FfnKind::Dense;
  c.tie_word_embeddings = true;
  c.num_nextn_predict_layers = 1;
  check_model(c, 2, 3, 300);
}

TEST(ModelGrad, GqaMoe) {
  ModelConfig c = base_config();
  c.attention = AttentionKind::GQA;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  check_model(c, 1, 5, 400);
}

}  // namespace
}  // namespace moelab
