// The aux-loss-free bias update (core/ops/moe_bias.h) on the CPU: hand-worked moves (under, over
// and exactly at the mean, sign(0) = 0), the f32 step as an in-place f32 add rounds it, the f64
// reference, a mean that is not a whole number, against a plain loop written from MODEL.md on
// random loads, and argument errors naming the bad value. Every comparison is exact (the claim is
// equality), through testing::close with zero tolerance so that a failure reports where.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/ops/moe_bias.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::expect_error;

// Loads as the step accumulates them: f64 counts.
Tensor load_tensor(const std::vector<double>& values) {
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, DType::F64);
  std::copy(values.begin(), values.end(), t.data<double>());
  return t;
}

// MODEL.md's rule written out: b_i + gamma * sign(mean - load_i), in the bias's dtype T.
template <typename T>
Tensor expected_bias(const Tensor& bias, const std::vector<double>& load, double gamma) {
  double mean = 0;
  for (double l : load) mean += l;
  mean /= static_cast<double>(load.size());
  Tensor out = bias.to(bias.dtype());
  for (size_t i = 0; i < load.size(); ++i) {
    const T step = mean > load[i] ? static_cast<T>(gamma) : mean < load[i] ? -static_cast<T>(gamma) : T(0);
    out.data<T>()[i] = bias.data<T>()[i] + step;
  }
  return out;
}

TEST(MoeBias, HandWorkedMovesAndSignOfZero) {
  // mean 4: expert 0 under (+gamma), expert 1 over (-gamma), experts 2 and 3 at the mean (sign 0).
  const Tensor before = testing::randn({4}, DType::F64, 1, 0.1);
  const Tensor bias = before.to(DType::F64);
  moe_bias_update(Exec{}, load_tensor({3, 5, 4, 4}), 0.001, bias);
  const double* b0 = before.data<double>();
  const double* b1 = bias.data<double>();
  EXPECT_EQ(b1[0], b0[0] + 0.001);
  EXPECT_EQ(b1[1], b0[1] - 0.001);
  EXPECT_EQ(b1[2], b0[2]);  // sign(0) = 0: exactly unchanged
  EXPECT_EQ(b1[3], b0[3]);
}

TEST(MoeBias, AllLoadsEqualMoveNothing) {
  // Every expert at the mean, including all-zero loads (an idle step): sign(0) = 0 everywhere.
  for (const std::vector<double>& load : {std::vector<double>{7, 7, 7}, std::vector<double>{0, 0, 0, 0, 0}}) {
    const Tensor before = testing::randn({static_cast<int64_t>(load.size())}, DType::F32, 2, 0.1);
    const Tensor bias = before.to(DType::F32);
    moe_bias_update(Exec{}, load_tensor(load), 0.001, bias);
    EXPECT_TRUE(testing::close(bias, before, 0, 0));
  }
}

// An f32 bias (training) moves by the f32 gamma, as torch's in-place add does.
TEST(MoeBias, F32StepIsTheF32Gamma) {
  const Tensor before = testing::randn({4}, DType::F32, 3, 0.1);
  const Tensor bias = before.to(DType::F32);
  moe_bias_update(Exec{}, load_tensor({3, 5, 4, 4}), 0.001, bias);
  const float* c0 = before.data<float>();
  const float* c1 = bias.data<float>();
  EXPECT_EQ(c1[0], c0[0] + 0.001f);
  EXPECT_EQ(c1[1], c0[1] - 0.001f);
  EXPECT_EQ(c1[2], c0[2]);
  EXPECT_EQ(c1[3], c0[3]);
}

// mean = 10/3: no load equals it, the two below gain and the one above loses.
TEST(MoeBias, FractionalMean) {
  const Tensor before = testing::randn({3}, DType::F64, 4, 0.1);
  const Tensor bias = before.to(DType::F64);
  moe_bias_update(Exec{}, load_tensor({3, 3, 4}), 0.25, bias);
  EXPECT_TRUE(testing::close(bias, expected_bias<double>(before, {3, 3, 4}, 0.25), 0, 0));
  EXPECT_EQ(bias.data<double>()[0], before.data<double>()[0] + 0.25);
  EXPECT_EQ(bias.data<double>()[2], before.data<double>()[2] - 0.25);
}

// Random integer loads over odd expert counts (E = 1 included: always at its own mean), both
// dtypes, against the rule written out.
TEST(MoeBias, MatchesTheRuleOnRandomLoads) {
  for (const int64_t E : {1, 2, 7, 64, 257}) {
    SCOPED_TRACE("E = " + std::to_string(E));
    const Tensor r = testing::randint({E}, 50, 10 + static_cast<uint64_t>(E));
    std::vector<double> load(static_cast<size_t>(E));
    for (int64_t i = 0; i < E; ++i) load[i] = r.data<int32_t>()[i];
    for (const DType dt : {DType::F32, DType::F64}) {
      const Tensor before = testing::randn({E}, dt, 20 + static_cast<uint64_t>(E), 0.05);
      const Tensor bias = before.to(dt);
      moe_bias_update(Exec{}, load_tensor(load), 0.001, bias);
      const Tensor expected =
          dt == DType::F32 ? expected_bias<float>(before, load, 0.001) : expected_bias<double>(before, load, 0.001);
      EXPECT_TRUE(testing::close(bias, expected, 0, 0)) << dtype_name(dt);
    }
  }
}

TEST(MoeBias, ZeroSpeedMovesNothing) {
  const Tensor before = testing::randn({5}, DType::F32, 5, 0.1);
  const Tensor bias = before.to(DType::F32);
  moe_bias_update(Exec{}, load_tensor({1, 9, 2, 8, 0}), 0.0, bias);
  EXPECT_TRUE(testing::close(bias, before, 0, 0));
}

TEST(MoeBias, RejectsBadArguments) {
  const Tensor bias = testing::randn({4}, DType::F32, 6, 0.1);
  const Tensor load = load_tensor({1, 2, 3, 4});
  expect_error([&] { moe_bias_update(Exec{}, load_tensor({1, 2, 3}), 0.001, bias); },
               "load is f64[3]@cpu, expected shape [4]");
  expect_error([&] { moe_bias_update(Exec{}, load.to(DType::F32), 0.001, bias); },
               "load is f32[4]@cpu, expected dtype f64");
  expect_error([&] { moe_bias_update(Exec{}, load_tensor({1, 2, -3, 4}), 0.001, bias); },
               "load[2] = -3, expected a finite count >= 0");
  const double nan = std::numeric_limits<double>::quiet_NaN();
  expect_error([&] { moe_bias_update(Exec{}, load_tensor({1, nan, 3, 4}), 0.001, bias); },
               "load[1] = nan, expected a finite count >= 0");
  expect_error([&] { moe_bias_update(Exec{}, load, -0.001, bias); }, "speed = -0.001, expected a finite step >= 0");
  expect_error([&] { moe_bias_update(Exec{}, load, std::numeric_limits<double>::infinity(), bias); },
               "expected a finite step >= 0");
  expect_error([&] { moe_bias_update(Exec{}, load, 0.001, Tensor::zeros({2, 2}, DType::F32)); }, "bias");
  expect_error([&] { moe_bias_update(Exec{}, load_tensor({}), 0.001, Tensor::zeros({0}, DType::F32)); },
               "expected [E] with at least one expert");
  expect_error([&] { moe_bias_update(Exec{}, load, 0.001, Tensor::zeros({4}, DType::I32)); },
               "the CPU reference takes f32 or f64 tensors");
  // Nothing moved on any failed call.
  EXPECT_TRUE(testing::close(bias, testing::randn({4}, DType::F32, 6, 0.1), 0, 0));
}

}  // namespace
}  // namespace moelab
