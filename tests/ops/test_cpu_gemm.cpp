// The CPU GEMM seam (core/ops/cpu_gemm.h): oneDNN's f32 and Eigen's f64 GEMM against a plain
// triple loop in double, over every transpose pair, row strides wider than the rows, alpha/beta,
// the model's shapes (a projection, an expert's rows, a long reduction), K = 0, and beta = 0 on a
// C full of NaN; the same call inside an OpenMP region (one thread per call) gives the same bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/ops/cpu_gemm.h"
#include "tests/harness.h"

namespace moelab {
namespace {

struct Case {
  bool ta, tb;
  int64_t m, n, k, pad;  // pad: extra elements at the end of each stored row
  double alpha, beta;
};

template <typename T>
std::vector<T> random_values(int64_t n, uint64_t seed) {
  const Tensor t = testing::randn({std::max<int64_t>(n, 1)}, DType::F64, seed);
  return std::vector<T>(t.data<double>(), t.data<double>() + n);
}

// Runs one case in T and compares with the double triple loop; f32 within a K-scaled tolerance.
template <typename T>
void check_case(const Case& c) {
  const int64_t a_rows = c.ta ? c.k : c.m, a_cols = c.ta ? c.m : c.k;
  const int64_t b_rows = c.tb ? c.n : c.k, b_cols = c.tb ? c.k : c.n;
  const int64_t lda = a_cols + c.pad, ldb = b_cols + c.pad, ldc = c.n + c.pad;
  const auto a = random_values<T>(a_rows * lda, 1), b = random_values<T>(b_rows * ldb, 2);
  auto cm = random_values<T>(c.m * ldc, 3);
  if (c.beta == 0) std::fill(cm.begin(), cm.end(), std::numeric_limits<T>::quiet_NaN());
  const auto c0 = cm;
  ref::gemm<T>(c.ta, c.tb, c.m, c.n, c.k, T(c.alpha), a.data(), lda, b.data(), ldb, T(c.beta), cm.data(), ldc);
  const double tol = std::is_same_v<T, float> ? 2e-6 * (c.k + 1) : 1e-12 * (c.k + 1);
  for (int64_t i = 0; i < c.m; ++i) {
    for (int64_t j = 0; j < c.n; ++j) {
      double want = 0;
      for (int64_t p = 0; p < c.k; ++p) {
        const double av = c.ta ? a[p * lda + i] : a[i * lda + p];
        const double bv = c.tb ? b[j * ldb + p] : b[p * ldb + j];
        want += av * bv;
      }
      want = c.alpha * want + (c.beta == 0 ? 0.0 : c.beta * double(c0[i * ldc + j]));
      ASSERT_NEAR(double(cm[i * ldc + j]), want, tol * (1 + std::abs(want)))
          << "ta " << c.ta << " tb " << c.tb << " M " << c.m << " N " << c.n << " K " << c.k << " at " << i << ","
          << j;
    }
    for (int64_t j = c.n; j < ldc; ++j) ASSERT_EQ(std::isnan(cm[i * ldc + j]), std::isnan(c0[i * ldc + j]));
  }
}

const Case kCases[] = {
    {false, true, 37, 19, 23, 0, 1.0, 0.0},   {false, false, 37, 19, 23, 3, 1.0, 0.0},
    {true, false, 19, 23, 37, 5, 0.5, 1.0},   {true, true, 7, 11, 13, 2, -2.0, 0.25},
    {false, true, 1, 1, 1, 0, 1.0, 0.0},      {false, true, 256, 128, 64, 0, 1.0, 0.0},  // an expert
    {true, false, 64, 48, 2048, 0, 1.0, 1.0},                                            // a weight gradient
    {false, true, 5, 4, 0, 0, 1.0, 0.0},      {false, true, 5, 4, 0, 1, 1.0, 0.5},       // K = 0
};

TEST(CpuGemm, F32MatchesTheTripleLoop) {
  for (const Case& c : kCases) check_case<float>(c);
}

TEST(CpuGemm, F64MatchesTheTripleLoop) {
  for (const Case& c : kCases) check_case<double>(c);
}

TEST(CpuGemm, F32InsideAParallelRegionGivesTheSameBits) {
  // attention_gemm.cpp calls the GEMM from its own threads: each call must run whole on its
  // thread and give what the same call gives outside the region.
  const int64_t m = 64, n = 128, k = 48, calls = 8;
  const auto a = random_values<float>(m * k, 4), b = random_values<float>(n * k, 5);
  std::vector<float> want(m * n);
  ref::gemm<float>(false, true, m, n, k, 0.5f, a.data(), k, b.data(), k, 0.0f, want.data(), n);
  std::vector<std::vector<float>> got(calls, std::vector<float>(m * n));
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < calls; ++i)
    ref::gemm<float>(false, true, m, n, k, 0.5f, a.data(), k, b.data(), k, 0.0f, got[i].data(), n);
  for (int64_t i = 0; i < calls; ++i) EXPECT_EQ(got[i], want) << "call " << i;
}

}  // namespace
}  // namespace moelab
