// bf16 matmul on the CPU (core/ops/bf16_matmul.h): the rounding equals core/dtype.h's conversion
// on a sweep of bit patterns (ties, NaN, infinities, subnormals); forward and both backward GEMMs
// equal a double triple loop over the rounded operands and differ from the f32 GEMM; the contract
// (grad_x overwritten or skipped, grad_w accumulated); argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

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
  Tensor y = Tensor::empty({m, n}, DType::F32), gx = randn({m, k}, DType::F32, 4);
  Tensor gw0 = randn({n, k}, DType::F32, 5), gw = gw0.to(Device::CPU);
  bf16_matmul_forward(Exec{}, x, w, y);
  bf16_matmul_backward(Exec{}, gy, x, w, gx, gw);
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

TEST(Bf16Matmul, UndefinedGradXSkipsOnlyThatGemm) {
  const Tensor x = randn({4, 6}, DType::F32, 21), w = randn({3, 6}, DType::F32, 22), gy = randn({4, 3}, DType::F32, 23);
  Tensor gw_skip = randn({3, 6}, DType::F32, 24), gw_full = gw_skip.to(Device::CPU);
  Tensor gx = Tensor::empty({4, 6}, DType::F32);
  bf16_matmul_backward(Exec{}, gy, x, w, Tensor(), gw_skip);
  bf16_matmul_backward(Exec{}, gy, x, w, gx, gw_full);
  EXPECT_TRUE(testing::close(gw_skip, gw_full, 0, 0));
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
