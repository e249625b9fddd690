// bf16 matmul on the CPU (core/ops/bf16_matmul.h): the rounding and the conversion to bf16
// storage equal core/dtype.h's conversion on a sweep of bit patterns (ties, NaN, infinities,
// subnormals); on both paths (oneDNN's bf16 matmul where the CPU has one, the f32 emulation) the
// forward and both backward GEMMs equal a double triple loop over the rounded operands and differ
// from the f32 GEMM; oneDNN against the emulation on odd shapes within the bound of a reordered f32
// sum, the same bits call after call and inside a parallel region; the contract (grad_x overwritten
// or skipped, grad_w accumulated); which path Auto takes; argument errors.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/arena.h"
#include "core/dtype.h"
#include "core/ops/bf16_matmul.h"
#include "core/ops/matmul.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::randn;

float bf16_of(float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); }

TEST(Bf16Matmul, RoundingIsDtypeHsConversionBitForBit) {
  // Every 4099th bit pattern (a million of them, every exponent, both signs) plus the edges.
  std::vector<float> x;
  for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 4099) x.push_back(bits_float(static_cast<uint32_t>(u)));
  for (uint32_t u : {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u, 0xffffffffu,
                     0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x7f7fffffu, 0x00000001u, 0x00008000u, 0x00018000u})
    x.push_back(bits_float(u));  // zeros, infinities, NaNs (quiet, signalling), ties to even both ways, max, subnormals
  std::vector<float> y(x.size());
  ref::round_to_bf16(x.data(), y.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    const float want = bf16_of(x[i]);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(y[i])) << std::hex << float_bits(x[i]);
      ASSERT_EQ(float_bits(y[i]) & 0xffffu, 0u) << std::hex << float_bits(x[i]);
    } else {
      ASSERT_EQ(float_bits(y[i]), float_bits(want)) << std::hex << float_bits(x[i]);
    }
  }
}

TEST(Bf16Matmul, ConversionToBf16StorageIsDtypeHsConversionBitForBit) {
  std::vector<float> x;
  for (uint64_t u = 0; u < (uint64_t(1) << 32); u += 4099) x.push_back(bits_float(static_cast<uint32_t>(u)));
  for (uint32_t u : {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7fc00000u, 0x7f800001u, 0xffffffffu,
                     0x3f808000u, 0x3f818000u, 0x3f80ffffu, 0x7f7fffffu, 0x00000001u, 0x00008000u, 0x00018000u})
    x.push_back(bits_float(u));  // as above: zeros, infinities, NaNs, ties both ways, max, subnormals
  std::vector<bf16_t> y(x.size());
  ref::convert_to_bf16(x.data(), y.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i)  // NaNs included: the same quiet NaN bits
    ASSERT_EQ(y[i].bits, float_to_bf16_bits(x[i])) << std::hex << float_bits(x[i]);
}

// The paths to test here: the emulation always, oneDNN where this CPU has it.
std::vector<Bf16Gemm> paths() {
  if (bf16_matmul_onednn_available()) return {Bf16Gemm::Emulation, Bf16Gemm::OneDnn};
  return {Bf16Gemm::Emulation};
}

const char* path_name(Bf16Gemm g) { return g == Bf16Gemm::OneDnn ? "oneDNN" : "emulation"; }

// out[i, j] = sum_p op_a(i, p) op_b(p, j) in double over bf16-rounded f32 values.
std::vector<double> loop(const float* a, bool ta, const float* b, bool tb, int64_t m, int64_t n, int64_t k) {
  std::vector<double> out(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t p = 0; p < k; ++p)
        out[i * n + j] += double(bf16_of(ta ? a[p * m + i] : a[i * k + p])) * bf16_of(tb ? b[j * k + p] : b[p * n + j]);
  return out;
}

void expect_near_all(const float* got, const std::vector<double>& want, const char* what) {
  for (size_t i = 0; i < want.size(); ++i)
    ASSERT_NEAR(got[i], want[i], 1e-5 * (1 + std::abs(want[i]))) << what << " at " << i;
}

TEST(Bf16Matmul, ForwardAndBackwardAreTheGemmsOfTheRoundedOperands) {
  const int64_t m = 37, k = 29, n = 11;
  const Tensor x = randn({m, k}, DType::F32, 1), w = randn({n, k}, DType::F32, 2), gy = randn({m, n}, DType::F32, 3);
  for (const Bf16Gemm path : paths()) {
    SCOPED_TRACE(path_name(path));
    Tensor y = Tensor::empty({m, n}, DType::F32), gx = randn({m, k}, DType::F32, 4);
    Tensor gw0 = randn({n, k}, DType::F32, 5), gw = gw0.to(Device::CPU);
    bf16_matmul_forward(Exec{}, x, w, y, path);
    bf16_matmul_backward(Exec{}, gy, x, w, gx, gw, path);
    expect_near_all(y.data<float>(), loop(x.data<float>(), false, w.data<float>(), true, m, n, k), "y");
    expect_near_all(gx.data<float>(), loop(gy.data<float>(), false, w.data<float>(), false, m, k, n), "grad_x");
    std::vector<double> want_gw = loop(gy.data<float>(), true, x.data<float>(), false, n, k, m);
    for (int64_t i = 0; i < n * k; ++i) want_gw[i] += gw0.data<float>()[i];  // accumulated
    expect_near_all(gw.data<float>(), want_gw, "grad_w");

    // The rounding happened: the f32 GEMM of the same inputs differs by about bf16's 2^-9.
    Tensor y32 = Tensor::empty({m, n}, DType::F32);
    matmul_forward(Exec{}, x, w, y32);
    EXPECT_FALSE(testing::close(y, y32, 1e-4, 1e-4));
    EXPECT_TRUE(testing::close(y, y32, 0.05, 0.02));
  }
}

// sum_p |op_a(i, p) op_b(p, j)| in double over bf16-rounded values, plus |c0[i, j]| when the GEMM
// accumulates onto c0: the sum of the magnitudes of the terms that an f32 GEMM adds up.
std::vector<double> abs_loop(const float* a, bool ta, const float* b, bool tb, int64_t m, int64_t n, int64_t k,
                             const float* c0 = nullptr) {
  std::vector<double> out(m * n, 0.0);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = c0 ? std::abs(double(c0[i * n + j])) : 0.0;
      for (int64_t p = 0; p < k; ++p)
        s += std::abs(double(bf16_of(ta ? a[p * m + i] : a[i * k + p])) * bf16_of(tb ? b[j * k + p] : b[p * n + j]));
      out[i * n + j] = s;
    }
  return out;
}

// oneDNN's result against the emulation's on the same operands. Both add the same terms exactly
// representable in f32 (a product of two bf16 values has at most 16 significant bits; an
// accumulated GEMM adds the old value too) in different orders, and ANY order of adding n terms in
// f32 lands within gamma(n - 1) * sum |terms| of the exact sum, gamma(j) = j u / (1 - j u),
// u = 2^-24 (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 4.4). So the two
// differ by at most 2 gamma(n) sum |terms|. VDPBF16PS also flushes subnormal bf16 inputs and
// products to zero (changes under 2^-126 each): n * 2^-126 covers them.
void expect_within_reordering(const Tensor& got, const Tensor& want, const std::vector<double>& abs_sum,
                              int64_t n_terms, const char* what) {
  const double u = std::ldexp(1.0, -24), nu = static_cast<double>(n_terms) * u;
  const double gamma = nu / (1.0 - nu), flush = static_cast<double>(n_terms) * std::ldexp(1.0, -126);
  const float* g = got.data<float>();
  const float* e = want.data<float>();
  double worst = 0, worst_diff = 0, worst_bound = 0;
  size_t at = 0;
  for (size_t i = 0; i < abs_sum.size(); ++i) {
    const double diff = std::abs(double(g[i]) - double(e[i])), bound = 2 * gamma * abs_sum[i] + flush;
    ASSERT_LE(diff, bound) << what << " at " << i << ": oneDNN " << g[i] << ", emulation " << e[i] << ", sum |terms| "
                           << abs_sum[i];
    if (diff / bound > worst) worst = diff / bound, worst_diff = diff, worst_bound = bound, at = i;
  }
  // The largest difference, for the record (a reordered sum lands far inside the worst case).
  std::printf("  %-7s %zu elements, %lld terms each: max |oneDNN - emulation| / bound = %.3g (%.3g of %.3g at %zu)\n",
              what, abs_sum.size(), static_cast<long long>(n_terms), worst, worst_diff, worst_bound, at);
}

struct Dims { int64_t m, k, n; };

// Every GEMM of one shape on oneDNN and on the emulation, with an accumulating grad_w that starts
// from random values and an overwritten grad_x that starts from garbage. x may have leading dims.
void check_onednn_against_emulation(const Shape& x_shape, int64_t n, const Exec& ex) {
  const int64_t k = x_shape[-1];
  const Tensor x = randn(x_shape, DType::F32, 31), w = randn({n, k}, DType::F32, 32, 0.5);
  std::vector<int64_t> y_dims = x_shape.dims();
  y_dims.back() = n;
  const Shape y_shape(y_dims);
  const Tensor gy = randn(y_shape, DType::F32, 33, 2.0), gw0 = randn({n, k}, DType::F32, 34);
  const int64_t m = x.numel() / k;
  Tensor y[2], gx[2], gw[2];
  const Bf16Gemm path[2] = {Bf16Gemm::OneDnn, Bf16Gemm::Emulation};
  for (int p = 0; p < 2; ++p) {
    y[p] = randn(y_shape, DType::F32, 35);  // garbage: overwritten
    gx[p] = randn(x_shape, DType::F32, 36);
    gw[p] = gw0.to(Device::CPU);  // accumulated onto
    bf16_matmul_forward(ex, x, w, y[p], path[p]);
    bf16_matmul_backward(ex, gy, x, w, gx[p], gw[p], path[p]);
  }
  const float *px = x.data<float>(), *pw = w.data<float>(), *pgy = gy.data<float>();
  expect_within_reordering(y[0], y[1], abs_loop(px, false, pw, true, m, n, k), k, "y");
  expect_within_reordering(gx[0], gx[1], abs_loop(pgy, false, pw, false, m, k, n), n, "grad_x");
  expect_within_reordering(gw[0], gw[1], abs_loop(pgy, true, px, false, n, k, m, gw0.data<float>()), m + 1, "grad_w");
}

TEST(Bf16Matmul, OneDnnAgreesWithTheEmulationWithinTheReorderingBound) {
  if (!bf16_matmul_onednn_available()) GTEST_SKIP() << "oneDNN's bf16 matmul is not available: " << bf16_matmul_path();
  // M x K x N: one element; a few rows over a long K; odd sizes past the kernels' block edges; 128 x 64
  // blocks under a 2-row tail; one row.
  for (const Dims d : {Dims{1, 1, 1}, Dims{3, 300, 200}, Dims{257, 70, 129}, Dims{130, 128, 64}, Dims{1, 17, 5}}) {
    SCOPED_TRACE("M " + std::to_string(d.m) + " K " + std::to_string(d.k) + " N " + std::to_string(d.n));
    check_onednn_against_emulation({d.m, d.k}, d.n, Exec{});
  }
  SCOPED_TRACE("x [3, 43, 96] (leading dims), N 40, scratch from an arena");
  Arena arena(size_t{64} << 20, Device::CPU);
  Exec ex;
  ex.scratch = &arena;
  check_onednn_against_emulation({3, 43, 96}, 40, ex);
  EXPECT_EQ(arena.used(), 0u);  // the operands and oneDNN's scratchpad were given back
  EXPECT_GT(arena.peak(), 0u);  // and came from the arena
}

TEST(Bf16Matmul, OneDnnGivesTheSameBitsOnEveryCall) {
  if (!bf16_matmul_onednn_available()) GTEST_SKIP() << "oneDNN's bf16 matmul is not available: " << bf16_matmul_path();
  const int64_t m = 257, k = 70, n = 129;
  const Tensor x = randn({m, k}, DType::F32, 41), w = randn({n, k}, DType::F32, 42), gy = randn({m, n}, DType::F32, 43);
  const Tensor gw0 = randn({n, k}, DType::F32, 44);
  Tensor y[2], gx[2], gw[2];
  for (int call = 0; call < 2; ++call) {
    y[call] = Tensor::empty({m, n}, DType::F32);
    gx[call] = Tensor::empty({m, k}, DType::F32);
    gw[call] = gw0.to(Device::CPU);
    bf16_matmul_forward(Exec{}, x, w, y[call], Bf16Gemm::OneDnn);
    bf16_matmul_backward(Exec{}, gy, x, w, gx[call], gw[call], Bf16Gemm::OneDnn);
  }
  EXPECT_TRUE(testing::close(y[1], y[0], 0, 0));
  EXPECT_TRUE(testing::close(gx[1], gx[0], 0, 0));
  EXPECT_TRUE(testing::close(gw[1], gw[0], 0, 0));
}

TEST(Bf16Matmul, OneDnnInsideAParallelRegionRunsEachCallOnItsThread) {
  if (!bf16_matmul_onednn_available()) GTEST_SKIP() << "oneDNN's bf16 matmul is not available: " << bf16_matmul_path();
  // A call from a thread of an outer region plans for one thread: it gives what the same call
  // gives on one thread outside any region (the split of the work, hence the sums' order, depends
  // on the thread count).
  const int64_t m = 96, k = 64, n = 48, calls = 6;
  const Tensor x = randn({m, k}, DType::F32, 51), w = randn({n, k}, DType::F32, 52), gy = randn({m, n}, DType::F32, 53);
  const Tensor gw0 = randn({n, k}, DType::F32, 54);
  Tensor y1 = Tensor::empty({m, n}, DType::F32), gx1 = Tensor::empty({m, k}, DType::F32), gw1 = gw0.to(Device::CPU);
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  bf16_matmul_forward(Exec{}, x, w, y1, Bf16Gemm::OneDnn);
  bf16_matmul_backward(Exec{}, gy, x, w, gx1, gw1, Bf16Gemm::OneDnn);
  omp_set_num_threads(threads);
  std::vector<Tensor> y(calls), gx(calls), gw(calls);
  for (int64_t i = 0; i < calls; ++i) {
    y[i] = Tensor::empty({m, n}, DType::F32);
    gx[i] = Tensor::empty({m, k}, DType::F32);
    gw[i] = gw0.to(Device::CPU);
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < calls; ++i) {
    bf16_matmul_forward(Exec{}, x, w, y[i], Bf16Gemm::OneDnn);
    bf16_matmul_backward(Exec{}, gy, x, w, gx[i], gw[i], Bf16Gemm::OneDnn);
  }
  EXPECT_EQ(omp_get_max_threads(), threads);  // the region's setting did not leak out
  for (int64_t i = 0; i < calls; ++i) {
    EXPECT_TRUE(testing::close(y[i], y1, 0, 0)) << "call " << i;
    EXPECT_TRUE(testing::close(gx[i], gx1, 0, 0)) << "call " << i;
    EXPECT_TRUE(testing::close(gw[i], gw1, 0, 0)) << "call " << i;
  }
}

TEST(Bf16Matmul, AutoTakesThePathItReports) {
  // Auto runs oneDNN where it is available, unless MOELAB_BF16_EMULATE=1 asks for the emulation,
  // and bf16_matmul_path() says which: the same bits as the path named.
  const std::string path = bf16_matmul_path();
  const bool onednn = path.rfind("oneDNN bf16 matmul (", 0) == 0;
  EXPECT_TRUE(onednn || path.rfind("emulated (", 0) == 0) << path;
  const char* env = std::getenv("MOELAB_BF16_EMULATE");
  EXPECT_EQ(onednn, bf16_matmul_onednn_available() && !(env && std::string(env) == "1")) << path;
  std::printf("  bf16 GEMMs: %s\n", path.c_str());

  const int64_t m = 130, k = 128, n = 64;
  const Tensor x = randn({m, k}, DType::F32, 61), w = randn({n, k}, DType::F32, 62), gy = randn({m, n}, DType::F32, 63);
  const Bf16Gemm named = onednn ? Bf16Gemm::OneDnn : Bf16Gemm::Emulation;
  Tensor y_auto = Tensor::empty({m, n}, DType::F32), y_named = Tensor::empty({m, n}, DType::F32);
  Tensor gx_auto = Tensor::empty({m, k}, DType::F32), gx_named = Tensor::empty({m, k}, DType::F32);
  Tensor gw_auto = Tensor::zeros({n, k}, DType::F32), gw_named = Tensor::zeros({n, k}, DType::F32);
  bf16_matmul_forward(Exec{}, x, w, y_auto);
  bf16_matmul_forward(Exec{}, x, w, y_named, named);
  bf16_matmul_backward(Exec{}, gy, x, w, gx_auto, gw_auto);
  bf16_matmul_backward(Exec{}, gy, x, w, gx_named, gw_named, named);
  EXPECT_TRUE(testing::close(y_auto, y_named, 0, 0));
  EXPECT_TRUE(testing::close(gx_auto, gx_named, 0, 0));
  EXPECT_TRUE(testing::close(gw_auto, gw_named, 0, 0));
}

TEST(Bf16Matmul, OneDnnAskedForWhereItIsMissingIsAnError) {
  if (bf16_matmul_onednn_available()) GTEST_SKIP() << "oneDNN's bf16 matmul is available here: " << bf16_matmul_path();
  const Tensor x = randn({2, 4}, DType::F32, 71), w = randn({3, 4}, DType::F32, 72);
  Tensor y = Tensor::empty({2, 3}, DType::F32);
  testing::expect_error([&] { bf16_matmul_forward(Exec{}, x, w, y, Bf16Gemm::OneDnn); },
                        "bf16_matmul_forward: oneDNN's bf16 matmul was asked for, but emulated (");
}

TEST(Bf16Matmul, UndefinedGradXSkipsOnlyThatGemm) {
  for (const Bf16Gemm path : paths()) {
    SCOPED_TRACE(path_name(path));
    for (const Dims d : {Dims{4, 6, 3}, Dims{257, 70, 129}}) {
      const Tensor x = randn({d.m, d.k}, DType::F32, 21), w = randn({d.n, d.k}, DType::F32, 22);
      const Tensor gy = randn({d.m, d.n}, DType::F32, 23);
      Tensor gw_skip = randn({d.n, d.k}, DType::F32, 24), gw_full = gw_skip.to(Device::CPU);
      Tensor gx = Tensor::empty({d.m, d.k}, DType::F32);
      bf16_matmul_backward(Exec{}, gy, x, w, Tensor(), gw_skip, path);
      bf16_matmul_backward(Exec{}, gy, x, w, gx, gw_full, path);
      EXPECT_TRUE(testing::close(gw_skip, gw_full, 0, 0));
    }
  }
}

TEST(Bf16Matmul, ArgumentErrorsNameTheTensor) {
  const Tensor x = Tensor::zeros({2, 4}, DType::F32), w = Tensor::zeros({3, 4}, DType::F32);
  testing::expect_error([&] { bf16_matmul_forward(Exec{}, x, w, Tensor::zeros({2, 5}, DType::F32)); },
                        "bf16_matmul_forward: y is");
  const Tensor x64 = Tensor::zeros({2, 4}, DType::F64), w64 = Tensor::zeros({3, 4}, DType::F64);
  testing::expect_error([&] { bf16_matmul_forward(Exec{}, x64, w64, Tensor::zeros({2, 3}, DType::F64)); },
                        "bf16_matmul_forward: x");
  const Tensor w5 = Tensor::zeros({3, 5}, DType::F32);
  testing::expect_error([&] { bf16_matmul_forward(Exec{}, x, w5, Tensor::zeros({2, 3}, DType::F32)); },
                        "expected [N, 4]");
}

}  // namespace
}  // namespace moelab
