// AdamW: the first step's known move (lr * sign(g) after decay), several steps against an
// independent double-precision re-implementation (f32 and f64 tensors), the optional converted
// param_copy output, and argument errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/ops/adamw.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::randn;

// At step 1 with eps = 0 the bias corrections make m_hat = g and v_hat = g^2, so each weight moves
// by exactly lr * sign(g) after the decay.
TEST(Adamw, FirstStepMovesByLrTimesSignAfterDecay) {
  const int64_t n = 37;
  AdamWParams hp;
  hp.lr = 0.01;
  hp.eps = 0.0;
  hp.weight_decay = 0.1;
  for (DType dtype : {DType::F64, DType::F32}) {
    Tensor p = randn({n}, dtype, 1), g = randn({n}, dtype, 2);
    Tensor m = Tensor::zeros({n}, dtype), v = Tensor::zeros({n}, dtype);
    const Tensor p0 = p.to(DType::F64), g0 = g.to(DType::F64);
    adamw_step(Exec{}, p, g, m, v, hp);
    Tensor expected = Tensor::empty({n}, DType::F64), m_expected = Tensor::empty({n}, DType::F64);
    Tensor v_expected = Tensor::empty({n}, DType::F64);
    for (int64_t i = 0; i < n; ++i) {
      const double gi = g0.data<double>()[i];
      expected.data<double>()[i] = p0.data<double>()[i] * (1 - hp.lr * hp.weight_decay) - hp.lr * (gi > 0 ? 1 : -1);
      m_expected.data<double>()[i] = (1 - hp.beta1) * gi;
      v_expected.data<double>()[i] = (1 - hp.beta2) * gi * gi;
    }
    // f64: a few ulps. f32: rounding of ~4 float operations on values of size ~1.
    const double tol = dtype == DType::F64 ? 1e-15 : 1e-6;
    EXPECT_TRUE(testing::close(p, expected, tol, tol)) << dtype_name(dtype);
    EXPECT_TRUE(testing::close(m, m_expected, tol, tol)) << dtype_name(dtype);
    EXPECT_TRUE(testing::close(v, v_expected, tol, tol)) << dtype_name(dtype);
  }
}

// The textbook form, in double, written independently of the op: decay, moments, bias-corrected
// moments, update.
void adamw_textbook(std::vector<double>& p, const std::vector<double>& g, std::vector<double>& m,
                    std::vector<double>& v, const AdamWParams& hp) {
  const double t = static_cast<double>(hp.step);
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] -= hp.lr * hp.weight_decay * p[i];
    m[i] = hp.beta1 * m[i] + (1 - hp.beta1) * g[i];
    v[i] = hp.beta2 * v[i] + (1 - hp.beta2) * g[i] * g[i];
    const double m_hat = m[i] / (1 - std::pow(hp.beta1, t));
    const double v_hat = v[i] / (1 - std::pow(hp.beta2, t));
    p[i] -= hp.lr * m_hat / (std::sqrt(v_hat) + hp.eps);
  }
}

std::vector<double> values_of(const Tensor& t) {
  const Tensor d = t.to(DType::F64);
  return {d.data<double>(), d.data<double>() + d.numel()};
}

TEST(Adamw, SeveralStepsMatchTextbookDouble) {
  const int64_t n = 101;
  for (DType dtype : {DType::F64, DType::F32}) {
    Tensor p = randn({n}, dtype, 11), m = Tensor::zeros({n}, dtype), v = Tensor::zeros({n}, dtype);
    std::vector<double> p_ref = values_of(p), m_ref(n, 0.0), v_ref(n, 0.0);
    AdamWParams hp;
    hp.lr = 3e-3;
    hp.eps = 1e-8;
    hp.weight_decay = 0.1;
    // Steps 1..5, then a jump to step 1000 (as after a resume) where the bias corrections are ~1.
    for (int64_t step : {1, 2, 3, 4, 5, 1000}) {
      hp.step = step;
      hp.lr *= 0.9;  // a schedule changes lr between steps
      Tensor g = randn({n}, dtype, 100 + step, /*std=*/0.05 + 0.1 * (step % 7));
      adamw_step(Exec{}, p, g, m, v, hp);
      adamw_textbook(p_ref, values_of(g), m_ref, v_ref, hp);
    }
    const Tensor expected = Tensor::empty({n}, DType::F64);
    std::copy(p_ref.begin(), p_ref.end(), expected.data<double>());
    // f32: each step rounds p (~1e-7 relative) and the update; six steps stay well inside 1e-6.
    const double tol = dtype == DType::F64 ? 1e-13 : 1e-6;
    EXPECT_TRUE(testing::close(p, expected, tol, tol)) << dtype_name(dtype);
  }
}

TEST(Adamw, ZeroGradientOnlyDecays) {
  Tensor p = randn({9}, DType::F64, 21), g = Tensor::zeros({9}, DType::F64);
  Tensor m = Tensor::zeros({9}, DType::F64), v = Tensor::zeros({9}, DType::F64);
  const Tensor p0 = p.to(DType::F64);
  AdamWParams hp;
  hp.lr = 0.5;
  hp.weight_decay = 0.2;
  adamw_step(Exec{}, p, g, m, v, hp);
  for (int64_t i = 0; i < 9; ++i) EXPECT_DOUBLE_EQ(p.data<double>()[i], p0.data<double>()[i] * 0.9);
}

// param_copy receives the UPDATED param converted to its dtype (bf16: round to nearest even, the
// same conversion as Tensor::to), whatever it held before; the step itself is unchanged by it.
TEST(Adamw, ParamCopyReceivesTheUpdatedParamConverted) {
  const int64_t n = 203;
  for (DType dtype : {DType::F32, DType::F64}) {
    for (DType copy_dtype : {DType::BF16, DType::F32}) {
      Tensor p = randn({n}, dtype, 41), m = Tensor::zeros({n}, dtype), v = Tensor::zeros({n}, dtype);
      Tensor p_plain = p.to(dtype), m_plain = m.to(dtype), v_plain = v.to(dtype);  // copies: a run without param_copy
      // Another shape with the same numel, pre-filled with garbage that must be overwritten.
      Tensor copy = randn({7, 29}, DType::F32, 42, 100.0).to(copy_dtype);
      AdamWParams hp;
      hp.lr = 2e-2;
      for (int64_t step : {1, 2, 3}) {
        hp.step = step;
        hp.weight_decay = step == 2 ? 0.0 : 0.1;
        const Tensor g = randn({n}, dtype, 50 + step, 0.3);
        adamw_step(Exec{}, p, g, m, v, hp, copy);
        adamw_step(Exec{}, p_plain, g, m_plain, v_plain, hp);
        // The step is bit-identical with and without the copy.
        EXPECT_TRUE(testing::close(p, p_plain, 0.0, 0.0)) << dtype_name(dtype) << " step " << step;
        EXPECT_TRUE(testing::close(m, m_plain, 0.0, 0.0)) << dtype_name(dtype) << " step " << step;
        // The copy: exactly the f32 value (through f32 for an f64 param), rounded once to copy_dtype.
        const Tensor expected = p.to(DType::F32).to(copy_dtype).to(DType::F64).reshape({7, 29});
        EXPECT_TRUE(testing::close(copy.to(DType::F64), expected, 0.0, 0.0))
            << dtype_name(dtype) << " -> " << dtype_name(copy_dtype) << " step " << step;
      }
    }
  }
}

// bf16 rounding of the copy is to nearest EVEN: values built exactly halfway between two bf16
// numbers (after a step that leaves them unchanged: lr = 0) round to the even neighbour.
TEST(Adamw, ParamCopyBf16RoundsToNearestEven) {
  // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties to 1 (even). 1 + 3 * 2^-8 lies halfway
  // between 1 + 2^-7 and 1 + 2^-6: ties to 1 + 2^-6 (even). -(1 + 2^-8) ties to -1.
  const std::vector<float> values = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, -(1.0f + 0x1p-8f), 1.0f + 0x1p-8f + 0x1p-20f};
  const std::vector<float> expected = {1.0f, 1.0f + 0x1p-6f, -1.0f, 1.0f + 0x1p-7f};
  const int64_t n = static_cast<int64_t>(values.size());
  Tensor p = Tensor::empty({n}, DType::F32), g = randn({n}, DType::F32, 61);
  std::copy(values.begin(), values.end(), p.data<float>());
  Tensor m = Tensor::zeros({n}, DType::F32), v = Tensor::zeros({n}, DType::F32);
  Tensor copy = Tensor::zeros({n}, DType::BF16);
  AdamWParams hp;
  hp.lr = 0.0;  // the param stays as it is; only the copy is written
  adamw_step(Exec{}, p, g, m, v, hp, copy);
  const Tensor got = copy.to(DType::F32);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(p.data<float>()[i], values[i]) << i;
    EXPECT_EQ(got.data<float>()[i], expected[i]) << i;
  }
}

using testing::expect_error;

TEST(Adamw, ArgumentErrorsNameTheValue) {
  Tensor p = Tensor::zeros({5}, DType::F32), g = Tensor::zeros({5}, DType::F32);
  Tensor m = Tensor::zeros({5}, DType::F32), v = Tensor::zeros({5}, DType::F32);
  auto with = [](std::function<void(AdamWParams&)> edit) {
    AdamWParams hp;
    edit(hp);
    return hp;
  };
  expect_error([&] { adamw_step(Exec{}, p, g, m, v, with([](AdamWParams& h) { h.step = 0; })); },
               "step is 0, expected >= 1");
  expect_error([&] { adamw_step(Exec{}, p, g, m, v, with([](AdamWParams& h) { h.lr = -0.5; })); }, "lr is -0.5");
  expect_error([&] { adamw_step(Exec{}, p, g, m, v, with([](AdamWParams& h) { h.beta1 = 1.0; })); },
               "beta1 is 1, expected a value in [0, 1)");
  expect_error([&] { adamw_step(Exec{}, p, g, m, v, with([](AdamWParams& h) { h.beta2 = -0.1; })); }, "beta2 is -0.1");
  expect_error([&] { adamw_step(Exec{}, p, g, m, v, with([](AdamWParams& h) { h.eps = -1e-8; })); }, "eps is -1e-08");
  expect_error([&] { adamw_step(Exec{}, p, g, m, v, with([](AdamWParams& h) { h.weight_decay = -0.1; })); },
               "weight_decay is -0.1");
  expect_error([&] { adamw_step(Exec{}, p, g, Tensor::zeros({4}, DType::F32), v, AdamWParams{}); },
               "m is f32[4]@cpu, expected shape [5]");
  expect_error([&] { adamw_step(Exec{}, p, g, m, Tensor::zeros({5}, DType::F64), AdamWParams{}); },
               "v is f64[5]@cpu, expected dtype f32");
  expect_error([&] { adamw_step(Exec{}, p, g, m, v, AdamWParams{}, Tensor::zeros({6}, DType::BF16)); },
               "param_copy is bf16[6]@cpu, expected 5 elements");
  expect_error([&] { adamw_step(Exec{}, p, g, m, v, AdamWParams{}, Tensor::zeros({5}, DType::I32)); },
               "param_copy is i32[5]@cpu, expected dtype f32 or bf16");
}

}  // namespace
}  // namespace moelab
