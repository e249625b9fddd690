// train/step.h's train_step on a tiny MoE model in f32 on the CPU: two micro-batches of B/2
// sequences give the step one micro-batch of B gives (losses, loads, gradients, norm, weights and
// aux-loss-free bias after the update); a GradSync reduces exactly once per step, after every
// backward and before the norm (what it does to the gradients is what the norm, clipping and update
// see), hears of finished gradients during the last backward only, and averages the losses and sums
// the loads; a reused StepStats starts each step from zeros; a non-finite gradient skips the update
// and leaves weights, moments and bias alone.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <numeric>
#include <vector>

#include "core/ops/grad_norm.h"
#include "tests/harness.h"
#include "tests/train/read_step.h"
#include "train/step.h"

namespace moelab {
namespace {

constexpr int64_t kB = 4, kT = 8;

ModelConfig tiny_config() { return testing::tiny_moe_config(); }

// A model, its optimizer and an arena: what the trainer holds around the step.
struct StepRig {
  explicit StepRig(const ModelConfig& c) : model(c), arena(size_t{64} << 20, Device::CPU) {
    model.allocate(Device::CPU, DType::F32);
    model.initialize(7);
    optimizer = std::make_unique<AdamW>(model.params(), AdamWConfig{});
  }
  Context context(int64_t batch) { return Context{&arena, DType::F32, batch, kT, nullptr}; }
  Model model;
  Arena arena;
  std::unique_ptr<AdamW> optimizer;
};

Tensor copy(const Tensor& t) { return t.to(Device::CPU); }

Tensor tokens_for_test() {
  return testing::randint({kB, kT + 1 + tiny_config().num_nextn_predict_layers}, 31, 11);
}

// A GradSync standing for n ranks holding the same gradients and statistics: the reduction sums,
// so gradients, losses and loads are multiplied by n (the step divides the losses by ranks() again).
// It keeps the gradients as they were before the reduction, and what backward reported.
class IdenticalRanks : public GradSync {
 public:
  IdenticalRanks(const ParamBuffer& p, int n) : params_(p), n_(n), whole_{OwnedRange{{0, p.numel_padded()}, n}} {}
  void grads_ready(const Exec&, int64_t offset) override { ready.push_back(offset); }
  void finish_grads(const Exec&) override {
    ++finished;
    before = params_.flat_grads().to(Device::CPU);
    norm_before = grad_norm(Exec{}, {before});
    float* g = params_.flat_grads().data<float>();
    for (int64_t i = 0; i < params_.flat_grads().numel(); ++i) g[i] *= static_cast<float>(n_);
  }
  const std::vector<OwnedRange>& owned() const override { return whole_; }
  void sum(std::vector<double>& values) override {
    for (double& v : values) v *= n_;
  }
  void sum(const Exec&, const Tensor& values) override {
    double* v = values.data<double>();
    for (int64_t i = 0; i < values.numel(); ++i) v[i] *= n_;
  }
  void gather_params(const Exec&) override { ++gathered; }
  int ranks() const override { return n_; }

  std::vector<int64_t> ready;
  Tensor before;
  int finished = 0, gathered = 0;
  double norm_before = 0;

 private:
  const ParamBuffer& params_;
  int n_;
  std::vector<OwnedRange> whole_;
};

TEST(TrainStep, TwoMicroBatchesOfHalfEqualOneBatch) {
  const Tensor tokens = tokens_for_test();
  StepConfig cfg;
  cfg.lr = 1e-3;
  cfg.grad_clip = 0.5;  // below the norm here: clipping is part of what must agree
  Tensor grads_whole, grads_halves;

  StepRig whole(tiny_config());
  cfg.grad_accum_steps = 1;
  IdenticalRanks record_whole(whole.model.params(), 1);  // one rank: records the gradients only
  const StepStats a = testing::read_step(whole.model, *whole.optimizer, whole.context(kB), cfg, [&] { return tokens; },
                                 &record_whole);
  grads_whole = record_whole.before;

  StepRig halves(tiny_config());
  cfg.grad_accum_steps = 2;
  IdenticalRanks record_halves(halves.model.params(), 1);
  int64_t next = 0;
  const StepStats b = testing::read_step(
      halves.model, *halves.optimizer, halves.context(kB / 2), cfg,
      [&] {
        const int64_t begin = next++ * (kB / 2);
        return tokens.slice(begin, begin + kB / 2);
      },
      &record_halves);
  grads_halves = record_halves.before;
  ASSERT_EQ(next, 2);

  ASSERT_TRUE(a.finite && b.finite);
  EXPECT_GT(a.grad_norm, cfg.grad_clip) << "clipping must be active for this test to cover it";
  auto near = [](double x, double y) { return std::abs(x - y) <= 1e-6 + 1e-5 * std::abs(y); };
  EXPECT_PRED2(near, b.losses.total, a.losses.total);
  EXPECT_PRED2(near, b.losses.main, a.losses.main);
  ASSERT_EQ(b.losses.mtp.size(), 1u);
  EXPECT_PRED2(near, b.losses.mtp[0], a.losses.mtp[0]);
  EXPECT_GT(a.losses.seq_aux, 0);
  EXPECT_PRED2(near, b.losses.seq_aux, a.losses.seq_aux);
  EXPECT_GT(a.losses.z, 0);
  EXPECT_PRED2(near, b.losses.z, a.losses.z);
  EXPECT_PRED2(near, b.grad_norm, a.grad_norm);
  // Loads are counts: the same tokens make the same selections, however they are split.
  ASSERT_EQ(a.loads.size(), 2u);  // layer 1 and the MTP block
  EXPECT_EQ(b.loads, a.loads);
  for (const auto& layer : a.loads)
    EXPECT_EQ(std::accumulate(layer.begin(), layer.end(), 0.0), static_cast<double>(kB * kT * 2));
  ASSERT_EQ(b.last_moe.size(), 2u);
  EXPECT_EQ(std::accumulate(b.last_moe[0].load.begin(), b.last_moe[0].load.end(), 0.0),
            static_cast<double>(kB / 2 * kT * 2))
      << "last_moe is the last micro-batch's";

  EXPECT_TRUE(testing::close(grads_halves, grads_whole, 1e-7, 1e-4));
  // One AdamW step moves each weight by about lr (the first step's update is g/|g|): compare at
  // a fraction of that.
  EXPECT_TRUE(testing::close(halves.model.params().flat_params(), whole.model.params().flat_params(), 1e-3 * cfg.lr,
                             1e-5));
  EXPECT_TRUE(testing::close(halves.model.buffers().flat_params(), whole.model.buffers().flat_params(), 0, 0))
      << "the bias update follows the summed loads";
}

TEST(TrainStep, GradSyncReducesOnceAfterBackwardBeforeTheNorm) {
  const Tensor tokens = tokens_for_test();
  StepRig s(tiny_config());
  StepRig alone(tiny_config());
  StepConfig cfg;
  cfg.lr = 1e-3;
  cfg.grad_accum_steps = 2;
  int64_t micro_batches = 0;
  const auto next_tokens = [&] {
    ++micro_batches;
    return tokens.slice(0, kB / 2);
  };
  IdenticalRanks sync(s.model.params(), 2);
  for (int step = 1; step <= 2; ++step) {
    sync.ready.clear();
    const StepStats st = testing::read_step(s.model, *s.optimizer, s.context(kB / 2), cfg, next_tokens, &sync);
    const StepStats one = testing::read_step(alone.model, *alone.optimizer, alone.context(kB / 2), cfg,
                                     [&] { return tokens.slice(0, kB / 2); });
    EXPECT_EQ(sync.finished, step) << "exactly one reduction per step";
    EXPECT_EQ(sync.gathered, step);
    // Backward reports falling offsets during the LAST micro-batch only, ending at 0.
    ASSERT_FALSE(sync.ready.empty());
    EXPECT_EQ(sync.ready.back(), 0);
    for (size_t i = 1; i < sync.ready.size(); ++i) EXPECT_LT(sync.ready[i], sync.ready[i - 1]);
    EXPECT_EQ(static_cast<int64_t>(sync.ready.size()), 1 + 1 + 2 + 1) << "MTP, head, 2 blocks, embedding";
    // Doubling is exact in float and the norm's double sum, so the norm must be exactly twice.
    EXPECT_EQ(st.grad_norm, 2 * sync.norm_before) << "the norm must be taken after the reduction";
    if (step > 1) continue;  // AdamW's eps makes the doubled gradients' update differ in the last bits
    EXPECT_EQ(st.grad_norm, 2 * one.grad_norm);
    // Losses averaged over the two "ranks" (the same), loads summed (twice one rank's).
    EXPECT_EQ(st.losses.total, one.losses.total);
    EXPECT_EQ(st.losses.mtp, one.losses.mtp);
    ASSERT_EQ(st.loads.size(), one.loads.size());
    for (size_t l = 0; l < st.loads.size(); ++l)
      for (size_t e = 0; e < st.loads[l].size(); ++e) EXPECT_EQ(st.loads[l][e], 2 * one.loads[l][e]);
  }
  EXPECT_EQ(micro_batches, 4);
  EXPECT_EQ(s.optimizer->steps_taken(), 2);
}

// The trainer hands one StepStats to every step: its device buffer is reset at each step, so a
// reused one reports what a fresh one does, step after step, and the verdict's loss (every step) is
// the one read() brings back (log steps).
TEST(TrainStep, ReusedStatsAreResetEachStep) {
  const Tensor tokens = tokens_for_test();
  StepRig reused_rig(tiny_config()), fresh_rig(tiny_config());
  StepConfig cfg;
  cfg.lr = 1e-3;
  StepStats reused;
  for (int step = 1; step <= 3; ++step) {
    train_step(reused_rig.model, *reused_rig.optimizer, reused_rig.context(kB), cfg, [&] { return tokens; }, reused);
    const double verdict = reused.losses.total;
    ASSERT_TRUE(reused.finite);
    reused.read(reused_rig.model);
    EXPECT_EQ(reused.losses.total, verdict) << "step " << step;
    const StepStats fresh =
        testing::read_step(fresh_rig.model, *fresh_rig.optimizer, fresh_rig.context(kB), cfg, [&] { return tokens; });
    EXPECT_EQ(reused.losses.total, fresh.losses.total) << "step " << step;
    EXPECT_EQ(reused.losses.mtp, fresh.losses.mtp) << "step " << step;
    EXPECT_EQ(reused.loads, fresh.loads) << "step " << step << ": loads summed from zero each step";
    EXPECT_EQ(reused.max_vio(), fresh.max_vio()) << "step " << step;
  }
}

// A dense model (no MoE layer: no loads, no bias) steps too: its statistics are the heads' alone.
TEST(TrainStep, DenseModelHasNoLoadsAndNoBias) {
  ModelConfig c = tiny_config();
  c.ffn = FfnKind::Dense;
  c.validate();
  StepRig s(c);
  ASSERT_TRUE(s.model.moe_layers().empty());
  StepConfig cfg;
  cfg.lr = 1e-3;
  const Tensor tokens = tokens_for_test();
  const StepStats st = testing::read_step(s.model, *s.optimizer, s.context(kB), cfg, [&] { return tokens; });
  EXPECT_TRUE(st.finite);
  EXPECT_GT(st.losses.main, 0);
  EXPECT_EQ(st.losses.mtp.size(), 1u);
  EXPECT_EQ(st.balance_loss(), 0.0);
  EXPECT_TRUE(st.loads.empty());
  EXPECT_EQ(st.max_vio(), 0.0);
  EXPECT_EQ(s.optimizer->steps_taken(), 1);
}

// A GradSync that poisons one gradient, as a rank with a NaN would after the all-reduce.
class PoisonOneGradient : public IdenticalRanks {
 public:
  using IdenticalRanks::IdenticalRanks;
  void finish_grads(const Exec& ex) override {
    IdenticalRanks::finish_grads(ex);
    grads.data<float>()[0] = NAN;
  }
  Tensor grads;
};

TEST(TrainStep, NonFiniteGradientSkipsTheUpdate) {
  const Tensor tokens = tokens_for_test();
  StepRig s(tiny_config());
  StepConfig cfg;
  cfg.lr = 1e-3;
  cfg.grad_clip = 1.0;
  const Tensor params_before = copy(s.model.params().flat_params());
  const Tensor bias_before = copy(s.model.buffers().flat_params());
  PoisonOneGradient poison(s.model.params(), 1);
  poison.grads = s.model.params().flat_grads();
  const StepStats st = testing::read_step(s.model, *s.optimizer, s.context(kB), cfg, [&] { return tokens; }, &poison);
  EXPECT_FALSE(st.finite);
  EXPECT_TRUE(std::isfinite(st.losses.total));
  EXPECT_TRUE(std::isnan(st.grad_norm));
  EXPECT_EQ(s.optimizer->steps_taken(), 0);
  EXPECT_TRUE(testing::close(s.model.params().flat_params(), params_before, 0, 0));
  EXPECT_TRUE(testing::close(s.model.buffers().flat_params(), bias_before, 0, 0));
}

}  // namespace
}  // namespace moelab
