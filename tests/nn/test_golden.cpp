// The whole model against the independent PyTorch twin (tests/reference/, contract in GOLDEN.md):
// the same weights and tokens must give the same logits, every loss term, every parameter
// gradient, the router loads and drops, and the same trajectory over 5 AdamW steps with gradient
// clipping and the aux-loss-free bias update.
// Tolerances (tests/README.md): the twin computes in f64 and rounds to f32; moelab runs in f32.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "core/nn/model.h"
#include "core/ops/grad_norm.h"
#include "core/safetensors.h"
#include "tests/harness.h"
#include "train/optimizer.h"

namespace moelab {
namespace {

std::string golden_path(const std::string& name) {
  return std::string(MOELAB_SOURCE_DIR) + "/tests/reference/golden/" + name + ".safetensors";
}

Tensor scalar(double v) {
  Tensor t = Tensor::empty({}, DType::F64);
  t.fill(v);
  return t;
}

// Loads every parameter and buffer of `model` from the golden file (each must be there, with the
// declared shape) and checks that the file holds no weight the model lacks.
void load_weights(Model& model, const Safetensors& g) {
  for (const auto& e : model.params().entries()) {
    ASSERT_TRUE(g.contains(e.spec.name)) << "golden file lacks parameter " << e.spec.name;
    ASSERT_EQ(g.at(e.spec.name).shape(), e.spec.shape) << e.spec.name;
    model.params().param(e.spec.name).copy_from(g.at(e.spec.name));
  }
  for (const auto& e : model.buffers().entries()) {
    ASSERT_TRUE(g.contains("buffer." + e.spec.name)) << "golden file lacks buffer " << e.spec.name;
    model.buffers().param(e.spec.name).copy_from(g.at("buffer." + e.spec.name));
  }
  for (const auto& [name, t] : g.tensors) {
    const bool prefixed = name.rfind("grad.", 0) == 0 || name.rfind("adamw.", 0) == 0 || name.rfind("loss.", 0) == 0 ||
                          name.rfind("router.", 0) == 0 || name.rfind("buffer.", 0) == 0;
    if (!prefixed && name != "tokens" && name != "logits") {
      EXPECT_TRUE(model.params().contains(name)) << "the twin has a weight moelab does not declare: " << name;
    }
  }
}

class Golden : public ::testing::TestWithParam<const char*> {};

TEST_P(Golden, MatchesThePyTorchTwin) {
  const Safetensors g = read_safetensors(golden_path(GetParam()));
  const ModelConfig cfg = model_config_from_json(nlohmann::json::parse(g.metadata.at("config")));
  const int64_t B = std::stoll(g.metadata.at("batch_size")), T = std::stoll(g.metadata.at("seq_len"));
  Model model(cfg);
  model.allocate(Device::CPU, DType::F32);
  load_weights(model, g);
  if (HasFatalFailure()) return;
  Arena arena(64 << 20, Device::CPU);
  Context ctx{&arena, DType::F32, B, T};
  const Tensor& tokens = g.at("tokens");

  // Forward: logits, every loss term, router statistics.
  Model::Saved saved;
  model.forward(ctx, tokens, saved);
  const Model::Losses losses = model.read_losses(ctx, saved);
  EXPECT_TRUE(testing::close(saved.head.logits, g.at("logits"), 2e-5, 1e-4)) << "logits";
  EXPECT_TRUE(testing::close(scalar(losses.total), g.at("loss.total"), 1e-6, 1e-5)) << "loss.total";
  EXPECT_TRUE(testing::close(scalar(losses.main), g.at("loss.main"), 1e-6, 1e-5)) << "loss.main";
  for (size_t k = 0; k < losses.mtp.size(); ++k)
    EXPECT_TRUE(testing::close(scalar(losses.mtp[k]), g.at("loss.mtp." + std::to_string(k + 1)), 1e-6, 1e-5))
        << "loss.mtp." << k + 1;
  EXPECT_EQ(losses.mtp.size(), static_cast<size_t>(cfg.num_nextn_predict_layers));
  EXPECT_TRUE(testing::close(scalar(losses.seq_aux), g.at("loss.seq_aux"), 1e-8, 1e-5)) << "loss.seq_aux";
  EXPECT_TRUE(testing::close(scalar(losses.aux), g.at("loss.aux"), 1e-8, 1e-5)) << "loss.aux";
  EXPECT_TRUE(testing::close(scalar(losses.z), g.at("loss.z"), 1e-8, 1e-5)) << "loss.z";
  const std::vector<int64_t> layers = model.moe_layers();
  const std::vector<MoEStats> stats = model.moe_stats(saved);
  for (size_t i = 0; i < layers.size(); ++i) {
    const std::string l = std::to_string(layers[i]);
    Tensor load = Tensor::empty({static_cast<int64_t>(stats[i].load.size())}, DType::F64);
    std::copy(stats[i].load.begin(), stats[i].load.end(), load.data<double>());
    EXPECT_TRUE(testing::close(load, g.at("router.load." + l), 0, 0)) << "router.load." << l;
    EXPECT_TRUE(testing::close(scalar(static_cast<double>(stats[i].dropped)), g.at("router.dropped." + l), 0, 0))
        << "router.dropped." << l;
  }

  // Backward: every parameter gradient.
  model.params().zero_grads();
  model.backward(ctx, saved);
  for (const auto& e : model.params().entries())
    EXPECT_TRUE(testing::close(model.params().grad(e.spec.name), g.at("grad." + e.spec.name), 1e-6, 2e-4))
        << "grad." << e.spec.name;

  // Five AdamW steps (lr 1e-2, betas 0.9/0.95, eps 1e-8, decay 0.1 where declared, clip 1.0), each
  // followed by the aux-loss-free bias update with that step's loads.
  AdamW optimizer(model.params(), AdamWConfig{0.9, 0.95, 1e-8, 0.1});
  Tensor step_losses = Tensor::empty({5}, DType::F64);
  for (int step = 1; step <= 5; ++step) {
    arena.reset();
    Model::Saved s;
    model.forward(ctx, tokens, s);
    step_losses.data<double>()[step - 1] = model.read_losses(ctx, s).total;
    model.params().zero_grads();
    model.backward(ctx, s);
    clip_grad_norm(Exec{}, {model.params().flat_grads()}, 1.0);
    optimizer.step(Exec{}, 1e-2);
    // The loads as train_step hands them over: f64 [MoE layers, E].
    const std::vector<MoEStats> st = model.moe_stats(s);
    const Tensor loads = Tensor::empty({static_cast<int64_t>(st.size()), cfg.n_routed_experts}, DType::F64);
    for (size_t i = 0; i < st.size(); ++i)
      std::copy(st[i].load.begin(), st[i].load.end(), loads.data<double>() + i * st[i].load.size());
    model.update_bias(ctx, loads);
  }
  EXPECT_TRUE(testing::close(step_losses, g.at("adamw.loss"), 1e-5, 1e-4)) << "adamw.loss";
  for (const auto& e : model.buffers().entries()) {
    const std::string l = e.spec.name.substr(std::string("model.layers.").size());
    EXPECT_TRUE(testing::close(model.buffers().param(e.spec.name),
                               g.at("adamw.bias." + l.substr(0, l.find('.'))), 1e-7, 1e-6))
        << "bias after 5 steps: " << e.spec.name;
  }
  // AdamW moves each weight by about lr * sign(gradient) whatever the gradient's size, so a weight
  // whose gradient is f32 rounding noise (under 1e-5 of its tensor's largest, e.g. 4e-9 against a
  // largest of 0.1: the size of the rounding of the GEMM sums that produce it) moves in a
  // direction no f32 GEMM decides: such a weight may miss the tolerance (a few per tensor at most).
  for (const auto& e : model.params().entries()) {
    const Tensor want = g.at("adamw.final." + e.spec.name), grad = g.at("grad." + e.spec.name);
    Tensor got = model.params().param(e.spec.name).to(Device::CPU);
    const float* gr = grad.data<float>();
    float largest = 0;
    for (int64_t i = 0; i < grad.numel(); ++i) largest = std::max(largest, std::abs(gr[i]));
    int64_t excused = 0;
    for (int64_t i = 0; i < got.numel(); ++i) {
      const float a = got.data<float>()[i], b = want.data<float>()[i];
      if (std::abs(a - b) <= 1e-4f + 1e-3f * std::abs(b)) continue;
      if (gr[i] == 0.0f || std::abs(gr[i]) >= 1e-5f * largest) continue;  // a decided gradient: close() reports it
      got.data<float>()[i] = b;
      ++excused;
    }
    EXPECT_LE(excused, 2) << e.spec.name << ": " << excused << " weights with noise gradients off";
    EXPECT_TRUE(testing::close(got, want, 1e-4, 1e-3)) << "adamw.final." << e.spec.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Twin, Golden, ::testing::Values("mla_moe_mtp", "mha_dense", "gqa_moe_softmax", "mla_groups_nobias"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace moelab
