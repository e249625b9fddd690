// Cross-entropy: finite-difference gradient checks in double (ignored rows included), the
// all-ignored case, known values and statistics, stability for large logits, f32 vs f64 agreement,
// and target / argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/ops/cross_entropy.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::check_grad;
using testing::randn;

constexpr int kIgnore = -100;

Tensor ce_stats() { return Tensor::empty({kCrossEntropyStats}, DType::F64); }

Shape without_last_dim(const Shape& s) {
  std::vector<int64_t> d = s.dims();
  d.pop_back();
  return Shape(d);
}

// L = c * mean loss for a random c, so backward runs with grad_loss = c. grad_logits is
// overwritten, so it starts as garbage; rows listed in `ignored` get target ignore_index.
void check_cross_entropy_grads(const Shape& logits_shape, const std::vector<int>& ignored) {
  const int64_t vocab = logits_shape[-1];
  const Shape rows = without_last_dim(logits_shape);
  Tensor logits = randn(logits_shape, DType::F64, 1, 2.0);
  Tensor targets = testing::randint(rows, static_cast<int32_t>(vocab), 2);
  for (int r : ignored) targets.data<int32_t>()[r] = kIgnore;
  Tensor losses = Tensor::empty(rows, DType::F64), lse = Tensor::empty(rows, DType::F64);
  const Tensor st = ce_stats();
  const double c = 0.7;
  auto loss = [&] { return c * cross_entropy_mean(Exec{}, logits, targets, kIgnore, losses, lse, st); };
  loss();
  Tensor grad = randn(logits_shape, DType::F64, 3);
  cross_entropy_backward(Exec{}, logits, targets, lse, st, kIgnore, c, grad);
  EXPECT_TRUE(check_grad(logits, grad, loss)) << "logits " << logits_shape.str() << ", " << ignored.size() << " ignored";
  for (int r : ignored) {
    EXPECT_EQ(losses.data<double>()[r], 0.0) << "ignored row " << r;
    for (int64_t v = 0; v < vocab; ++v) EXPECT_EQ(grad.data<double>()[r * vocab + v], 0.0) << "ignored row " << r;
  }
}

TEST(CrossEntropy, GradCheckOneRow) { check_cross_entropy_grads({1, 5}, {}); }                // N = 1
TEST(CrossEntropy, GradCheckOddShapes) { check_cross_entropy_grads({5, 7}, {}); }
TEST(CrossEntropy, GradCheckIgnoredRows) { check_cross_entropy_grads({5, 7}, {1, 4}); }       // n_valid = 3
TEST(CrossEntropy, GradCheck3DIgnoredRows) { check_cross_entropy_grads({2, 3, 11}, {0, 5}); }  // [B, T, V]

TEST(CrossEntropy, AllIgnoredGivesZeroNotNan) {
  Tensor logits = randn({3, 4}, DType::F32, 11), targets = Tensor::empty({3}, DType::I32);
  targets.fill(kIgnore);
  Tensor losses = Tensor::empty({3}, DType::F32), lse = Tensor::empty({3}, DType::F32);
  const Tensor st = ce_stats();
  EXPECT_EQ(cross_entropy_mean(Exec{}, logits, targets, kIgnore, losses, lse, st), 0.0);
  EXPECT_EQ(read_cross_entropy_stats(st).n_valid, 0);
  for (int r = 0; r < 3; ++r) EXPECT_EQ(losses.data<float>()[r], 0.0f);
  Tensor grad = randn({3, 4}, DType::F32, 12);
  cross_entropy_backward(Exec{}, logits, targets, lse, st, kIgnore, 1.0, grad);
  for (int i = 0; i < 12; ++i) EXPECT_EQ(grad.data<float>()[i], 0.0f) << "element " << i;
}

TEST(CrossEntropy, KnownValues) {
  // Row 0: uniform logits -> loss log V, lse = 1.5 + log V. Row 1: [0, ln 3, 0, 0] with target 1 ->
  // p = 3/6, loss ln 2. Row 2: ignored; the mean is over rows 0 and 1 only.
  const double v = 4;
  Tensor logits = Tensor::empty({3, 4}, DType::F64), targets = Tensor::empty({3}, DType::I32);
  const double xs[12] = {1.5, 1.5, 1.5, 1.5, 0, std::log(3.0), 0, 0, 9, -9, 9, -9};
  for (int i = 0; i < 12; ++i) logits.data<double>()[i] = xs[i];
  targets.data<int32_t>()[0] = 2;
  targets.data<int32_t>()[1] = 1;
  targets.data<int32_t>()[2] = kIgnore;
  Tensor losses = Tensor::empty({3}, DType::F64), lse = Tensor::empty({3}, DType::F64);
  const Tensor st = ce_stats();
  const double mean = cross_entropy_mean(Exec{}, logits, targets, kIgnore, losses, lse, st);
  // The statistics: the sum of the two valid rows' losses, their count, no bad row.
  const CrossEntropyStats stats = read_cross_entropy_stats(st);
  EXPECT_EQ(stats.loss_sum, losses.data<double>()[0] + losses.data<double>()[1]);
  EXPECT_EQ(stats.n_valid, 2);
  EXPECT_EQ(stats.bad_row, -1);
  EXPECT_EQ(stats.mean(), mean);
  EXPECT_NEAR(losses.data<double>()[0], std::log(v), 1e-15);
  EXPECT_NEAR(lse.data<double>()[0], 1.5 + std::log(v), 1e-15);
  EXPECT_NEAR(losses.data<double>()[1], std::log(2.0), 1e-15);
  EXPECT_NEAR(lse.data<double>()[2], 9 + std::log(2.0 + 2.0 * std::exp(-18.0)), 1e-14) << "lse of ignored rows too";
  EXPECT_NEAR(mean, (std::log(v) + std::log(2.0)) / 2, 1e-15);
  // Backward, grad_loss 1: row 1 gets (softmax - onehot) / 2 = [1/12, -1/4, 1/12, 1/12].
  Tensor grad = Tensor::empty({3, 4}, DType::F64);
  cross_entropy_backward(Exec{}, logits, targets, lse, st, kIgnore, 1.0, grad);
  const double expected_row1[4] = {1 / 12.0, -1 / 4.0, 1 / 12.0, 1 / 12.0};
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(grad.data<double>()[4 + i], expected_row1[i], 1e-15) << "element " << i;
}

TEST(CrossEntropy, LargeLogitsStayFinite) {
  // e^1000 overflows even double; the max subtraction keeps everything finite.
  Tensor logits = Tensor::empty({2, 3}, DType::F32), targets = Tensor::empty({2}, DType::I32);
  const float xs[6] = {1000, 1000, -1000, 1000, 0, 0};
  for (int i = 0; i < 6; ++i) logits.data<float>()[i] = xs[i];
  targets.data<int32_t>()[0] = 0;  // loss ln 2
  targets.data<int32_t>()[1] = 1;  // loss 1000 (+ e^-1000 terms)
  Tensor losses = Tensor::empty({2}, DType::F32), lse = Tensor::empty({2}, DType::F32);
  const Tensor st = ce_stats();
  const double mean = cross_entropy_mean(Exec{}, logits, targets, kIgnore, losses, lse, st);
  EXPECT_NEAR(losses.data<float>()[0], std::log(2.0), 1e-6);
  EXPECT_NEAR(losses.data<float>()[1], 1000.0, 1e-3);
  EXPECT_NEAR(mean, (std::log(2.0) + 1000.0) / 2, 1e-3);
  Tensor grad = Tensor::empty({2, 3}, DType::F32);
  cross_entropy_backward(Exec{}, logits, targets, lse, st, kIgnore, 1.0, grad);
  for (int i = 0; i < 6; ++i) EXPECT_TRUE(std::isfinite(grad.data<float>()[i])) << "element " << i;
  // softmax = e^(x - lse) with the saved f32 lse = 1000.69..., itself rounded by ~3e-5: about 1e-4 relative.
  EXPECT_NEAR(grad.data<float>()[0], -0.25, 1e-4);  // (1/2 - 1) / 2
  EXPECT_NEAR(grad.data<float>()[3], 0.5, 1e-4);    // (1 - 0) / 2
}

TEST(CrossEntropy, FloatMatchesDouble) {
  Tensor logits = randn({7, 50}, DType::F64, 21, 3.0), targets = testing::randint({7}, 50, 22);
  targets.data<int32_t>()[3] = kIgnore;
  Tensor l64 = Tensor::empty({7}, DType::F64), s64 = Tensor::empty({7}, DType::F64);
  Tensor l32 = Tensor::empty({7}, DType::F32), s32 = Tensor::empty({7}, DType::F32);
  Tensor g64 = Tensor::empty({7, 50}, DType::F64), g32 = Tensor::empty({7, 50}, DType::F32);
  const Tensor st64 = ce_stats(), st32 = ce_stats();
  const double m64 = cross_entropy_mean(Exec{}, logits, targets, kIgnore, l64, s64, st64);
  const double m32 = cross_entropy_mean(Exec{}, logits.to(DType::F32), targets, kIgnore, l32, s32, st32);
  EXPECT_NEAR(m32, m64, 1e-5 * std::fabs(m64));
  EXPECT_TRUE(testing::close(l32, l64, 1e-5, 1e-5));
  cross_entropy_backward(Exec{}, logits, targets, s64, st64, kIgnore, 1.3, g64);
  cross_entropy_backward(Exec{}, logits.to(DType::F32), targets, s32, st32, kIgnore, 1.3, g32);
  EXPECT_TRUE(testing::close(g32, g64, 1e-7, 1e-5));
}

TEST(CrossEntropy, BadTargetNamesRowValueAndVocab) {
  Tensor logits = randn({4, 5}, DType::F32, 31), targets = Tensor::empty({4}, DType::I32);
  const int32_t ts[4] = {0, kIgnore, 9, 1};
  for (int i = 0; i < 4; ++i) targets.data<int32_t>()[i] = ts[i];
  Tensor losses = Tensor::empty({4}, DType::F32), lse = Tensor::empty({4}, DType::F32);
  const Tensor st = ce_stats();
  try {
    cross_entropy_forward(Exec{}, logits, targets, kIgnore, losses, lse, st);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds 9 at row 2, expected a class in [0, V=5) or ignore_index -100"),
              std::string::npos)
        << e.what();
  }
  targets.data<int32_t>()[2] = -1;  // negative but not the ignore_index
  try {
    cross_entropy_backward(Exec{}, logits, targets, lse, st, kIgnore, 1.0, Tensor::empty({4, 5}, DType::F32));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds -1 at row 2"), std::string::npos) << e.what();
  }
}

TEST(CrossEntropy, ArgumentErrorsNameTheTensor) {
  Tensor logits = Tensor::zeros({2, 3, 5}, DType::F32), targets = Tensor::zeros({6}, DType::I32);
  Tensor losses = Tensor::zeros({2, 3}, DType::F32), lse = Tensor::zeros({2, 3}, DType::F32);
  const Tensor st = ce_stats();
  try {
    cross_entropy_forward(Exec{}, logits, targets, kIgnore, losses, lse, st);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("targets is i32[6]@cpu, expected shape [2,3]"), std::string::npos) << e.what();
  }
  Tensor targets23 = Tensor::zeros({2, 3}, DType::I32);
  try {
    cross_entropy_backward(Exec{}, logits, targets23, lse, st, kIgnore, 1.0, Tensor::zeros({2, 3, 4}, DType::F32));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("grad_logits is f32[2,3,4]@cpu, expected shape [2,3,5]"), std::string::npos)
        << e.what();
  }
  // targets not i32
  EXPECT_THROW(cross_entropy_forward(Exec{}, logits, targets23.to(DType::F32), kIgnore, losses, lse, st), Error);
  // mixed dtypes
  EXPECT_THROW(cross_entropy_forward(Exec{}, logits, targets23, kIgnore, losses.to(DType::F64), lse, st), Error);
  // stats: f64 [4]
  try {
    cross_entropy_forward(Exec{}, logits, targets23, kIgnore, losses, lse, Tensor::zeros({4}, DType::F32));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stats is f32[4]@cpu, expected dtype f64"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moelab
