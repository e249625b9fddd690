// The GPU half of the cross-device RNG test: the same seed and offset give the same numbers as
// the CPU. Uniform draws are bit-identical; normal draws are equal up to one float ulp (libm vs
// CUDA double log/cos, see core/rng.h).
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "tests/harness.h"

namespace moelab {
namespace {

using RngCuda = testing::GpuTest;

TEST_F(RngCuda, SameNumbersAsCpu) {
  const int64_t n = 1000003;  // odd: not a multiple of the block or of the 4 words per Philox call
  Tensor cu = Tensor::empty({n}, DType::F32), gu = Tensor::empty({n}, DType::F32, Device::CUDA);
  fill_uniform(cu, 42, 17, -1.0f, 2.0f);
  fill_uniform(gu, 42, 17, -1.0f, 2.0f);
  EXPECT_TRUE(testing::close(gu, cu, 0.0, 0.0)) << "uniform must be bit-identical";

  Tensor cn = Tensor::empty({n}, DType::F32), gn = Tensor::empty({n}, DType::F32, Device::CUDA);
  fill_normal(cn, 42, 17, 0.0, 0.02);
  fill_normal(gn, 42, 17, 0.0, 0.02);
  Tensor h = gn.to(Device::CPU);
  int64_t differ = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float a = h.data<float>()[i], b = cn.data<float>()[i];
    if (a != b) {
      ++differ;
      ASSERT_EQ(std::nextafter(b, a), a) << "element " << i << ": GPU " << a << " vs CPU " << b << " differ by more than 1 ulp";
    }
  }
  EXPECT_LE(differ, 10) << differ << " of " << n << " normal draws differ by one ulp";
}

}  // namespace
}  // namespace moelab
