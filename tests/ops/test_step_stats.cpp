// The step's statistics (core/ops/step_stats.h) on the CPU: the layout's offsets, two micro-batches
// accumulated against the arithmetic written out here from the header (means of the heads, the
// MTP weight, the balance losses summed over layers, the scale, loads summed and the last ones
// kept), the first bad target of the step, reset, and argument errors.
#include <gtest/gtest.h>

#include <vector>

#include "core/ops/cross_entropy.h"
#include "core/ops/step_stats.h"
#include "tests/harness.h"

namespace moelab {
namespace {

Tensor f64(const std::vector<double>& v) {
  Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::F64);
  std::copy(v.begin(), v.end(), t.data<double>());
  return t;
}

// Cross-entropy stats {loss_sum, n_valid, bad_row, bad_target}.
Tensor head(double loss_sum, double n_valid, double bad_row = -1, double bad_target = 0) {
  return f64({loss_sum, n_valid, bad_row, bad_target});
}

TEST(StepStats, LayoutOffsets) {
  const StepStatsLayout l{3, 2, 4};  // main + 2 MTP depths, 2 MoE layers of 4 experts
  EXPECT_EQ(l.main(), 4);
  EXPECT_EQ(l.mtp(1), 5);
  EXPECT_EQ(l.mtp(2), 6);
  EXPECT_EQ(l.seq_aux(), 7);
  EXPECT_EQ(l.aux(), 8);
  EXPECT_EQ(l.z(), 9);
  EXPECT_EQ(l.load(0), 10);
  EXPECT_EQ(l.load(1), 14);
  EXPECT_EQ(l.summed_begin(), 3);
  EXPECT_EQ(l.summed_end(), 18);
  EXPECT_EQ(l.last_load(0), 18);
  EXPECT_EQ(l.size(), 26);
  const StepStatsLayout dense{1, 0, 0};
  EXPECT_EQ(dense.summed_end(), 8);
  EXPECT_EQ(dense.size(), 8);
}

TEST(StepStats, TwoMicroBatchesAsWrittenOut) {
  const StepStatsLayout l{2, 2, 3};
  const Tensor acc = Tensor::empty({l.size()}, DType::F64);
  acc.fill(7.0);  // reset must clear whatever was there
  step_stats_reset(Exec{}, acc);
  for (int64_t i = 0; i < l.size(); ++i) ASSERT_EQ(acc.data<double>()[i], 0.0);

  const double w = 0.3 / 1.0, scale = 0.5;
  // Micro-batch 1: main mean 6/3 = 2, MTP mean 5/2 = 2.5; layer losses (0.1, 0, 0.01), (0.2, 0, 0.02).
  step_stats_accumulate(Exec{}, l, {head(6, 3), head(5, 2)}, {f64({0.1, 0, 0.01, 1, 2, 3}), f64({0.2, 0, 0.02, 0, 6, 0})},
                        w, scale, acc);
  // Micro-batch 2: no valid row in the MTP head (mean 0).
  step_stats_accumulate(Exec{}, l, {head(4, 4), head(0, 0)}, {f64({0.3, 0, 0, 2, 2, 2}), f64({0, 0, 0, 3, 3, 0})}, w,
                        scale, acc);
  const double* a = acc.data<double>();
  const double total1 = 2.0 + w * 2.5 + ((0.1 + 0.2) + 0.0 + (0.01 + 0.02));
  const double total2 = 1.0 + w * 0.0 + (0.3 + 0.0 + 0.0);
  EXPECT_DOUBLE_EQ(a[StepStatsLayout::kTotal], total1 * scale + total2 * scale);
  EXPECT_DOUBLE_EQ(a[l.main()], 2.0 * scale + 1.0 * scale);
  EXPECT_DOUBLE_EQ(a[l.mtp(1)], 2.5 * scale);
  EXPECT_DOUBLE_EQ(a[l.seq_aux()], 0.3 * scale + 0.3 * scale);
  EXPECT_EQ(a[l.aux()], 0.0);
  EXPECT_DOUBLE_EQ(a[l.z()], 0.03 * scale);
  EXPECT_EQ(std::vector<double>(a + l.load(0), a + l.load(2)), (std::vector<double>{3, 4, 5, 3, 9, 0}))
      << "loads: counts, summed unscaled";
  EXPECT_EQ(std::vector<double>(a + l.last_load(0), a + l.last_load(2)), (std::vector<double>{2, 2, 2, 3, 3, 0}))
      << "the last micro-batch's loads";
  EXPECT_EQ(a[StepStatsLayout::kBadHead], 0.0) << "no bad target";
}

// The first bad target of the step is kept: head index + 1, row and value; a later one does not
// replace it.
TEST(StepStats, FirstBadTargetOfTheStep) {
  const StepStatsLayout l{2, 0, 0};
  const Tensor acc = Tensor::zeros({l.size()}, DType::F64);
  step_stats_accumulate(Exec{}, l, {head(1, 1), head(1, 1, 5, 99)}, {}, 0.3, 1.0, acc);
  step_stats_accumulate(Exec{}, l, {head(1, 1, 2, -7), head(1, 1)}, {}, 0.3, 1.0, acc);
  EXPECT_EQ(acc.data<double>()[StepStatsLayout::kBadHead], 2.0) << "MTP depth 1 (head 1) + 1";
  EXPECT_EQ(acc.data<double>()[StepStatsLayout::kBadRow], 5.0);
  EXPECT_EQ(acc.data<double>()[StepStatsLayout::kBadTarget], 99.0);
}

TEST(StepStats, RejectsBadArguments) {
  const StepStatsLayout l{1, 1, 2};
  const Tensor acc = Tensor::zeros({l.size()}, DType::F64);
  const Tensor moe = f64({0, 0, 0, 1, 1});
  testing::expect_error([&] { step_stats_accumulate(Exec{}, l, {}, {moe}, 0, 1, acc); }, "0 heads' stats for a layout of 1");
  testing::expect_error([&] { step_stats_accumulate(Exec{}, l, {head(1, 1)}, {}, 0, 1, acc); },
                        "0 MoE layers' stats for a layout of 1");
  testing::expect_error([&] { step_stats_accumulate(Exec{}, l, {head(1, 1)}, {f64({0, 0, 0, 1})}, 0, 1, acc); },
                        "a MoE layer's stats is f64[4]@cpu, expected shape [5]");
  testing::expect_error(
      [&] { step_stats_accumulate(Exec{}, l, {head(1, 1)}, {moe}, 0, 1, Tensor::zeros({l.size()}, DType::F32)); },
      "acc is f32");
  testing::expect_error([&] { step_stats_accumulate(Exec{}, l, {head(1, 1)}, {moe}, 0, 1, Tensor::zeros({3}, DType::F64)); },
                        "acc is f64[3]@cpu, expected shape [12]");
  testing::expect_error([&] { step_stats_accumulate(Exec{}, StepStatsLayout{0, 0, 0}, {}, {}, 0, 1, acc); },
                        "expected 1 to 16 heads");
}

}  // namespace
}  // namespace moelab
