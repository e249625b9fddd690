// The FP8 matmul (core/ops/fp8_matmul.h) on the CPU: its three GEMMs against the chunked FP8 GEMM
// of the header computed in f64 from independently quantised operands (ref::fp8_gemm), at shapes
// that are not multiples of 128; that it really is FP8 (close to the f32 matmul, but not equal);
// the straight-through backward; the contract (grad_w accumulates, an undefined grad_x is skipped);
// and the Linear layer's switch to it.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "core/arena.h"
#include "core/nn/linear.h"
#include "core/ops/fp8_matmul.h"
#include "core/ops/matmul.h"
#include "core/params.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::expect_error;
using testing::randn;

struct Q {
  Tensor q, scales;
};

Q quantised(const Tensor& x, Fp8Quant how) {
  const int64_t r = how.transpose ? x.size(1) : x.size(0), c = how.transpose ? x.size(0) : x.size(1);
  Q out{Tensor::empty({r, c}, DType::FP8_E4M3), Tensor::empty(fp8_scales_shape(r, c, how.tile), DType::F32)};
  fp8_quantize(Exec{}, x, out.q, out.scales, how);
  return out;
}

// c[m, n] = chunked FP8 GEMM of a [m, k] and b [n, k] (f64), optionally on top of `init`.
std::vector<double> reference(const Q& a, Fp8Tile ta, const Q& b, Fp8Tile tb, const std::vector<double>& init = {}) {
  const int64_t m = a.q.size(0), n = b.q.size(0), k = a.q.size(1);
  std::vector<double> c = init.empty() ? std::vector<double>(static_cast<size_t>(m * n)) : init;
  ref::fp8_gemm(a.q.data<fp8_e4m3_t>(), a.scales.data<float>(), ta, b.q.data<fp8_e4m3_t>(), b.scales.data<float>(), tb,
                c.data(), m, n, k, !init.empty());
  return c;
}

// The f32 GEMM against the f64 sum: each output within 2^-20 of the sum of its |terms| (f32
// accumulation over at most a few hundred terms) plus the rounding of the result.
void expect_matches(const Tensor& got, const std::vector<double>& want, const std::vector<double>& abs_terms) {
  ASSERT_EQ(static_cast<size_t>(got.numel()), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got.data<float>()[i], want[i], std::ldexp(abs_terms[i], -20) + 1e-30) << "element " << i;
}

// sum_k |a[i, k] b[j, k]| of the dequantised operands: the scale of the rounding error.
std::vector<double> abs_terms(const Q& a, Fp8Tile ta, const Q& b, Fp8Tile tb) {
  auto absolute = [](const Q& x) {
    Q y{Tensor::empty(x.q.shape(), DType::FP8_E4M3), x.scales};
    for (int64_t i = 0; i < x.q.numel(); ++i) y.q.data<fp8_e4m3_t>()[i].bits = x.q.data<fp8_e4m3_t>()[i].bits & 0x7f;
    return y;
  };
  Q sa = absolute(a), sb = absolute(b);
  for (Q* s : {&sa, &sb}) {
    const Tensor copy = Tensor::empty(s->scales.shape(), DType::F32);
    copy.copy_from(s->scales);
    s->scales = copy;
    for (int64_t i = 0; i < s->scales.numel(); ++i) s->scales.data<float>()[i] = std::fabs(s->scales.data<float>()[i]);
  }
  return reference(sa, ta, sb, tb);
}

constexpr Fp8Tile kRow = Fp8Tile::Row128, kBlock = Fp8Tile::Block128;

struct Case {
  int64_t m, k, n;
};

class Fp8Matmul : public ::testing::TestWithParam<Case> {};

TEST_P(Fp8Matmul, ThreeGemmsAreTheChunkedFp8GemmOfTheQuantisedOperands) {
  const auto [M, K, N] = GetParam();
  for (bool pow2 : {false, true}) {
    SCOPED_TRACE(pow2 ? "pow2 scales" : "amax scales");
    const Fp8Recipe recipe{true, pow2};
    const Tensor x = randn({M, K}, DType::F32, 1), w = randn({N, K}, DType::F32, 2),
                 gy = randn({M, N}, DType::F32, 3), gw0 = randn({N, K}, DType::F32, 4);
    const Tensor gw = Tensor::empty({N, K}, DType::F32);
    gw.copy_from(gw0);
    // Fprop: Q(x) Row128 along K, Q(w) Block128.
    Tensor y = Tensor::empty({M, N}, DType::F32);
    fp8_matmul_forward(Exec{}, x, w, y, recipe);
    const Q qx = quantised(x, {kRow, false, pow2}), qw = quantised(w, {kBlock, false, pow2});
    expect_matches(y, reference(qx, kRow, qw, kBlock), abs_terms(qx, kRow, qw, kBlock));
    // Dgrad: Q(dy) Row128 along N, Q(w^T) Block128; Wgrad: Row128 tiles of dy^T and x^T (along M).
    Tensor gx = Tensor::empty({M, K}, DType::F32);
    fp8_matmul_backward(Exec{}, gy, x, w, gx, gw, recipe);
    const Q qgy = quantised(gy, {kRow, false, pow2}), qwt = quantised(w, {kBlock, true, pow2});
    expect_matches(gx, reference(qgy, kRow, qwt, kBlock), abs_terms(qgy, kRow, qwt, kBlock));
    const Q qgyt = quantised(gy, {kRow, true, pow2}), qxt = quantised(x, {kRow, true, pow2});
    std::vector<double> init(gw0.data<float>(), gw0.data<float>() + gw0.numel());
    std::vector<double> bound = abs_terms(qgyt, kRow, qxt, kRow);
    for (size_t i = 0; i < bound.size(); ++i) bound[i] += std::fabs(init[i]);
    expect_matches(gw, reference(qgyt, kRow, qxt, kRow, init), bound);
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, Fp8Matmul,
                         ::testing::Values(Case{1, 1, 1}, Case{3, 300, 200}, Case{130, 128, 64}, Case{257, 70, 129}));

// FP8 is close to the f32 GEMM (e4m3 keeps 3 mantissa bits: about 2^-4 relative per operand, and
// errors of random sign average out over K) but not equal to it.
TEST(Fp8MatmulTest, IsCloseToButNotTheF32Matmul) {
  const int64_t M = 64, K = 256, N = 96;
  const Tensor x = randn({M, K}, DType::F32, 11), w = randn({N, K}, DType::F32, 12);
  Tensor y8 = Tensor::empty({M, N}, DType::F32), y32 = Tensor::empty({M, N}, DType::F32);
  fp8_matmul_forward(Exec{}, x, w, y8, {true, false});
  matmul_forward(Exec{}, x, w, y32);
  double err = 0, norm = 0;
  for (int64_t i = 0; i < y8.numel(); ++i) {
    err += std::pow(y8.data<float>()[i] - y32.data<float>()[i], 2);
    norm += std::pow(y32.data<float>()[i], 2);
  }
  const double rel = std::sqrt(err / norm);
  EXPECT_GT(rel, 1e-3);  // quantisation happened
  EXPECT_LT(rel, 0.05);  // and it is the right quantisation
}

TEST(Fp8MatmulTest, UndefinedGradXSkipsDgradAndLeadingDimsFlatten) {
  const Tensor x = randn({2, 3, 40}, DType::F32, 1), w = randn({24, 40}, DType::F32, 2), gy = randn({2, 3, 24}, DType::F32, 3);
  Tensor gw_a = Tensor::zeros({24, 40}, DType::F32), gw_b = Tensor::zeros({24, 40}, DType::F32);
  Tensor gx = Tensor::empty({2, 3, 40}, DType::F32);
  fp8_matmul_backward(Exec{}, gy, x, w, Tensor(), gw_a, {true, false});
  fp8_matmul_backward(Exec{}, gy, x, w, gx, gw_b, {true, false});
  EXPECT_TRUE(testing::close(gw_a, gw_b, 0.0, 0.0));
  Tensor y3 = Tensor::empty({2, 3, 24}, DType::F32), y2 = Tensor::empty({6, 24}, DType::F32);
  fp8_matmul_forward(Exec{}, x, w, y3, {true, false});
  fp8_matmul_forward(Exec{}, x.reshape({6, 40}), w, y2, {true, false});
  EXPECT_TRUE(testing::close(y3.reshape({6, 24}), y2, 0.0, 0.0));
}

TEST(Fp8MatmulTest, RejectsBadArguments) {
  const Tensor x = randn({4, 40}, DType::F32, 1), w = randn({24, 40}, DType::F32, 2);
  expect_error([&] { fp8_matmul_forward(Exec{}, x, w, Tensor::empty({4, 23}, DType::F32), {true, false}); },
               "fp8_matmul_forward: y is f32[4,23]@cpu, expected shape [4,24]");
  expect_error([&] { fp8_matmul_forward(Exec{}, x.to(DType::F64), w.to(DType::F64), Tensor::empty({4, 24}, DType::F64), {true, false}); },
               "fp8_matmul_forward: x is f64[4,40]@cpu, expected f32 (the CPU emulates FP8 in f32)");
  expect_error([&] { fp8_matmul_backward(Exec{}, randn({4, 24}, DType::F32, 3), x, w, Tensor(), Tensor::zeros({24, 41}, DType::F32), {true, false}); },
               "fp8_matmul_backward: grad_w is f32[24,41]@cpu, expected shape [24,40]");
}

// The Linear layer takes the FP8 path exactly when the context says so.
TEST(Fp8MatmulTest, LinearFollowsTheContextsRecipe) {
  ParamBuffer params;
  const Linear lin(params, "proj", 40, 24, 0.5);
  params.allocate(Device::CPU, DType::F32);
  params.initialize(7);
  Arena arena(1 << 20, Device::CPU);
  Context ctx(&arena, DType::F32, 1, 4);
  const Tensor x = randn({4, 40}, DType::F32, 8);
  Tensor y = Tensor::empty({4, 24}, DType::F32), want = Tensor::empty({4, 24}, DType::F32);
  lin.forward(ctx, x, y);
  matmul_forward(Exec{}, x, lin.weight(), want);
  EXPECT_TRUE(testing::close(y, want, 0.0, 0.0));
  ctx.fp8 = {true, false};
  lin.forward(ctx, x, y);
  fp8_matmul_forward(Exec{}, x, lin.weight(), want, ctx.fp8);
  EXPECT_TRUE(testing::close(y, want, 0.0, 0.0));
  const Tensor gy = randn({4, 24}, DType::F32, 9);
  Tensor gx = Tensor::empty({4, 40}, DType::F32), gx_want = Tensor::empty({4, 40}, DType::F32),
         gw_want = Tensor::zeros({24, 40}, DType::F32);
  params.zero_grads();
  lin.backward(ctx, x, gy, gx);
  fp8_matmul_backward(Exec{}, gy, x, lin.weight(), gx_want, gw_want, ctx.fp8);
  EXPECT_TRUE(testing::close(gx, gx_want, 0.0, 0.0));
  EXPECT_TRUE(testing::close(lin.grad_weight(), gw_want, 0.0, 0.0));
}

}  // namespace
}  // namespace moelab
