// SwiGLU: finite-difference gradient checks in double for both inputs, the overwrite contract,
// known values (large |gate| included), f32 vs f64 agreement, and argument errors; the vectorised
// exp and sigmoid (core/ops/vec_math.h) against libm, its lane_sum against its stated order, and
// f32 SwiGLU across thread counts.
#include <gtest/gtest.h>

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/ops/activation.h"
#include "core/ops/swiglu.h"
#include "core/ops/vec_math.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::check_grad;
using testing::randn;

// grad_gate and grad_up are overwritten, so they start as garbage. L = <out, G>; gate ~ N(0, 3^2)
// reaches both the linear and the flat side of silu.
void check_swiglu_grads(const Shape& shape) {
  Tensor gate = randn(shape, DType::F64, 1, 3.0), up = randn(shape, DType::F64, 2), g = randn(shape, DType::F64, 3);
  Tensor out = Tensor::empty(shape, DType::F64);
  auto loss = [&] {
    swiglu_forward(Exec{}, gate, up, out);
    return testing::dot(out, g);
  };
  Tensor grad_gate = randn(shape, DType::F64, 4), grad_up = randn(shape, DType::F64, 5);
  swiglu_backward(Exec{}, g, gate, up, grad_gate, grad_up);
  EXPECT_TRUE(check_grad(gate, grad_gate, loss)) << "grad_gate, " << shape.str();
  EXPECT_TRUE(check_grad(up, grad_up, loss)) << "grad_up, " << shape.str();
}

TEST(Swiglu, GradCheckOneRow) { check_swiglu_grads({1, 5}); }     // T = 1
TEST(Swiglu, GradCheckOddShapes) { check_swiglu_grads({3, 7}); }
TEST(Swiglu, GradCheck3D) { check_swiglu_grads({2, 3, 13}); }     // [B, T, F]

TEST(Swiglu, KnownValuesAndLargeGates) {
  // silu(0) = 0, silu(1) = 1 / (1 + e^-1), silu(a) -> a for a >> 0 and -> 0 for a << 0.
  const double gates[5] = {0.0, 1.0, -1.0, 1000.0, -1000.0};
  Tensor gate = Tensor::empty({5}, DType::F64), up = Tensor::empty({5}, DType::F64), out = Tensor::empty({5}, DType::F64);
  for (int i = 0; i < 5; ++i) gate.data<double>()[i] = gates[i];
  up.fill(2.0);
  swiglu_forward(Exec{}, gate, up, out);
  const double s1 = 1.0 / (1.0 + std::exp(-1.0));
  const double* o = out.data<double>();
  EXPECT_EQ(o[0], 0.0);
  EXPECT_NEAR(o[1], 2.0 * s1, 1e-15);
  EXPECT_NEAR(o[2], 2.0 * -(1.0 - s1), 1e-15);
  EXPECT_EQ(o[3], 2000.0);
  EXPECT_EQ(o[4], 0.0);
  // d silu/da: 1/2 at 0, s + a s (1 - s) at 1, 1 and 0 in the tails (finite, no NaN).
  Tensor g = Tensor::empty({5}, DType::F64);
  Tensor grad_gate = Tensor::empty({5}, DType::F64), grad_up = Tensor::empty({5}, DType::F64);
  g.fill(1.0);
  swiglu_backward(Exec{}, g, gate, up, grad_gate, grad_up);
  const double* gg = grad_gate.data<double>();
  EXPECT_EQ(gg[0], 1.0);  // up * 1/2
  EXPECT_NEAR(gg[1], 2.0 * (s1 + s1 * (1 - s1)), 1e-15);
  EXPECT_EQ(gg[3], 2.0);
  EXPECT_EQ(gg[4], 0.0);
  EXPECT_EQ(grad_up.data<double>()[3], 1000.0);
  EXPECT_EQ(grad_up.data<double>()[4], 0.0);
}

TEST(Swiglu, FloatMatchesDouble) {
  const Shape s{4, 45};
  Tensor gate = randn(s, DType::F64, 11, 3.0), up = randn(s, DType::F64, 12), g = randn(s, DType::F64, 13);
  Tensor out64 = Tensor::empty(s, DType::F64), gg64 = Tensor::empty(s, DType::F64), gu64 = Tensor::empty(s, DType::F64);
  Tensor out32 = Tensor::empty(s, DType::F32), gg32 = Tensor::empty(s, DType::F32), gu32 = Tensor::empty(s, DType::F32);
  swiglu_forward(Exec{}, gate, up, out64);
  swiglu_forward(Exec{}, gate.to(DType::F32), up.to(DType::F32), out32);
  swiglu_backward(Exec{}, g, gate, up, gg64, gu64);
  swiglu_backward(Exec{}, g.to(DType::F32), gate.to(DType::F32), up.to(DType::F32), gg32, gu32);
  EXPECT_TRUE(testing::close(out32, out64, 1e-6, 1e-5));
  EXPECT_TRUE(testing::close(gg32, gg64, 1e-6, 1e-5));
  EXPECT_TRUE(testing::close(gu32, gu64, 1e-6, 1e-5));
}

TEST(Swiglu, ArgumentErrorsNameTheTensor) {
  Tensor gate = Tensor::zeros({2, 8}, DType::F32), up = Tensor::zeros({2, 9}, DType::F32);
  Tensor out = Tensor::zeros({2, 8}, DType::F32);
  try {
    swiglu_forward(Exec{}, gate, up, out);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("swiglu_forward: up is f32[2,9]@cpu, expected shape [2,8]"), std::string::npos)
        << e.what();
  }
  Tensor up8 = Tensor::zeros({2, 8}, DType::F32);
  try {
    swiglu_backward(Exec{}, out, gate, up8, Tensor::zeros({2, 8}, DType::F64), up8);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("grad_gate is f64[2,8]@cpu, expected dtype f32"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moelab

namespace moelab {
namespace {

TEST(VecMath, ExpApproxWithinTwoUlpOfLibmAndItsEdges) {
  // Every 1e-4 over the finite range (1.8 M points) against double exp: relative error < 1.5e-7.
  double worst = 0, worst_x = 0;
  for (double x = -87.33; x <= 88.7228; x += 1e-4) {
    const float xf = static_cast<float>(x);
    const double want = std::exp(static_cast<double>(xf));
    const double err = std::abs(ref::exp_approx(xf) - want) / want;
    if (err > worst) worst = err, worst_x = xf;
  }
  EXPECT_LT(worst, 1.5e-7) << "at x = " << worst_x;
  EXPECT_EQ(ref::exp_approx(0.0f), 1.0f);
  EXPECT_EQ(ref::exp_approx(-100.0f), 0.0f);
  EXPECT_EQ(ref::exp_approx(-INFINITY), 0.0f);
  EXPECT_EQ(ref::exp_approx(100.0f), INFINITY);
  EXPECT_TRUE(std::isnan(ref::exp_approx(NAN)));
}

TEST(VecMath, SigmoidApproxMatchesTheStableReference) {
  double worst = 0;
  for (double a = -80; a <= 80; a += 1e-4) {
    const float af = static_cast<float>(a);
    const double want = ref::sigmoid<double>(af);
    worst = std::max(worst, std::abs(ref::sigmoid_approx(af) - want) / want);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(ref::sigmoid_approx(0.0f), 0.5f);
  EXPECT_EQ(ref::sigmoid_approx(1000.0f), 1.0f);
  EXPECT_EQ(ref::sigmoid_approx(-1000.0f), 0.0f);
}

TEST(VecMath, LaneSumIsItsStatedOrderAndCloseToTheExactSum) {
  // The order lane_sum promises, written out by hand: lane l adds terms l, l + 16, l + 32, ... in
  // turn, then lanes l and l + w are added for w = 8, 4, 2, 1. The result must be those bits, for
  // lengths below, at and around multiples of the lane count, and within float rounding of the
  // sum in double.
  // Terms of both signs, stored: a product in the term could be fused into the adds (FMA)
  // differently in the two loops.
  std::vector<float> x(200);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(std::sin(0.37 * static_cast<double>(i)) * 3.0 + 0.1);
  for (int64_t n : {0, 1, 5, 15, 16, 17, 31, 32, 33, 100, 200}) {
    float lanes[16] = {};
    for (int64_t i = 0; i < n; ++i) lanes[i % 16] += x[i];
    for (int w = 8; w > 0; w /= 2)
      for (int l = 0; l < w; ++l) lanes[l] += lanes[l + w];
    double exact = 0, magnitude = 0;
    for (int64_t i = 0; i < n; ++i) exact += x[i], magnitude += std::abs(x[i]);
    const float got = ref::lane_sum<float>(n, [&](int64_t i) { return x[i]; });
    EXPECT_EQ(got, lanes[0]) << "n = " << n;
    EXPECT_NEAR(got, exact, 1e-6 * magnitude + 1e-30) << "n = " << n;
  }
}

TEST(VecMath, SwigluF32DoesNotDependOnTheThreadCount) {
  // The vectorised loop and its scalar remainder compute the same bits: 1 and 3 threads (chunks
  // starting at different elements) agree exactly, forward and backward.
  const Shape s{3, 37};
  Tensor gate = randn(s, DType::F32, 1, 3.0), up = randn(s, DType::F32, 2), g = randn(s, DType::F32, 3);
  auto run = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<Tensor> r{Tensor::empty(s, DType::F32), Tensor::empty(s, DType::F32), Tensor::empty(s, DType::F32)};
    swiglu_forward(Exec{}, gate, up, r[0]);
    swiglu_backward(Exec{}, g, gate, up, r[1], r[2]);
    omp_set_num_threads(saved);
    return r;
  };
  const auto one = run(1), three = run(3);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(testing::close(three[i], one[i], 0, 0)) << "tensor " << i;
}

}  // namespace
}  // namespace moelab
