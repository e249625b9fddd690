// Test helpers shared by every suite (the tolerance policy is in tests/README.md).
//   close(actual, expected, atol, rtol): passes when |a - e| <= atol + rtol * |e| everywhere, and
//       otherwise reports the max abs and rel error with their index and the values there.
//   check_grad(name, x, analytic, loss): central finite differences in double of the scalar `loss`
//       (which reads x's current values) against the analytic gradient, for every element of x.
//   random tensors from the project's own Philox fills (fresh values per seed, never zeros).
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/nn/config.h"
#include "core/tensor.h"

namespace moelab::testing {

// Default finite-difference step and tolerances for double gradient checks (tests/README.md).
constexpr double kGradStep = 1e-6;
constexpr double kGradAtol = 1e-7;
constexpr double kGradRtol = 1e-6;

::testing::AssertionResult close(const Tensor& actual, const Tensor& expected, double atol, double rtol);

// CPU tensors of `dtype` (f32 or f64) with N(mean, std^2) or U[lo, hi) values from seed.
Tensor randn(const Shape& shape, DType dtype, uint64_t seed, double std = 1.0, double mean = 0.0);
Tensor rand_uniform(const Shape& shape, DType dtype, uint64_t seed, float lo, float hi);
// CPU i32 tensor of values in [0, n), from seed.
Tensor randint(const Shape& shape, int32_t n, uint64_t seed);

// A tiny DeepSeek-style MoE for step-level tests (vocab 31, D 16, 2 layers: dense then MoE with 4
// experts top-2, MLA, MTP 1, the aux-free bias), with balance terms that are means over sequences
// or tokens (seq-wise aux loss, z-loss), so that halves of a batch average to the whole.
ModelConfig tiny_moe_config();
// CPU i32 tensor holding `values` (row-major; values.size() == shape.numel()).
Tensor i32_tensor(const Shape& shape, const std::vector<int32_t>& values);

// sum_i a_i * b_i in double (a, b on the CPU, any float dtype): the scalar loss L = <G, Y> whose
// gradient with respect to Y is G, used to turn an op's output into a checkable scalar.
double dot(const Tensor& a, const Tensor& b);

// Numerical d loss / d x (x: f64 on the CPU, perturbed in place and restored).
Tensor numeric_grad(const Tensor& x, const std::function<double()>& loss, double step = kGradStep);

// Compares analytic (f64, x's shape) against numeric_grad(x, loss).
::testing::AssertionResult check_grad(const Tensor& x, const Tensor& analytic, const std::function<double()>& loss,
                                      double atol = kGradAtol, double rtol = kGradRtol);

// Runs fn and expects a moelab::Error whose message contains `fragment` (the messages name the
// bad value, so the tests pin that they do).
void expect_error(const std::function<void()>& fn, const std::string& fragment);

// The message of the config error (moelab::ConfigError) that fn throws; fails the test when it
// throws nothing or another type. Config tests compare the whole message.
std::string config_error(const std::function<void()>& fn);

// GPU suites derive from this: their tests are skipped (not failed) on machines without a GPU.
class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_available()) GTEST_SKIP() << "no CUDA device visible (or built without CUDA)";
  }
};

}  // namespace moelab::testing
