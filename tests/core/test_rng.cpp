// Philox4x32-10 against the Random123 known-answer vectors, and the fills built on it.
// The GPU half of the cross-device determinism test is tests/gpu/test_rng_cuda.cpp.
#include <gtest/gtest.h>

#include <cmath>

#include "core/rng.h"
#include "cuda/philox.h"
#include "tests/harness.h"

namespace moelab {
namespace {

// Random123's kat_vectors for philox4x32 with 10 rounds: (counter, key) -> output.
TEST(Rng, Philox4x32KnownAnswers) {
  struct Kat { philox::U32x4 ctr; uint32_t k0, k1; philox::U32x4 out; };
  const Kat kats[] = {
      {{{0, 0, 0, 0}}, 0, 0, {{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}}},
      {{{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu,
       {{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}}},
      {{{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u,
       {{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}}},
  };
  for (const auto& k : kats) {
    const philox::U32x4 r = philox::philox4x32_10(k.ctr, k.k0, k.k1);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(r.v[i], k.out.v[i]) << "word " << i << " for counter " << std::hex << k.ctr.v[0];
  }
}

TEST(Rng, FillUsesTheStreamIndexNotThePosition) {
  // Filling [0, 100) at once equals filling two halves with offsets 0 and 50: the values depend on
  // (seed, offset + i) only, which is what makes initialisation independent of layout and device.
  Tensor whole = Tensor::empty({100}, DType::F32), a = Tensor::empty({50}, DType::F32), b = Tensor::empty({50}, DType::F32);
  fill_normal(whole, 7, 0, 0.0, 1.0);
  fill_normal(a, 7, 0, 0.0, 1.0);
  fill_normal(b, 7, 50, 0.0, 1.0);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(whole.data<float>()[i], a.data<float>()[i]);
    EXPECT_EQ(whole.data<float>()[50 + i], b.data<float>()[i]);
  }
  Tensor other_seed = Tensor::empty({100}, DType::F32);
  fill_normal(other_seed, 8, 0, 0.0, 1.0);
  int same = 0;
  for (int i = 0; i < 100; ++i) same += whole.data<float>()[i] == other_seed.data<float>()[i];
  EXPECT_LT(same, 3) << "different seeds must give different streams";
}

TEST(Rng, UniformAndNormalMoments) {
  const int64_t n = 1 << 20;
  Tensor u = Tensor::empty({n}, DType::F64), z = Tensor::empty({n}, DType::F64);
  fill_uniform(u, 123, 0, -2.0f, 3.0f);
  fill_normal(z, 123, 0, 0.5, 2.0);
  double su = 0, sz = 0, sz2 = 0, umin = 1e9, umax = -1e9;
  for (int64_t i = 0; i < n; ++i) {
    const double x = u.data<double>()[i], y = z.data<double>()[i];
    su += x; umin = std::min(umin, x); umax = std::max(umax, x);
    sz += y; sz2 += y * y;
  }
  const double mean_z = sz / n, var_z = sz2 / n - mean_z * mean_z;
  // Standard errors at n = 2^20: uniform mean 1.44/1024 = 0.0014, normal mean 2/1024 = 0.002,
  // variance 4*sqrt(2)/1024 = 0.0055; the bounds are about 5 standard errors.
  EXPECT_NEAR(su / n, 0.5, 0.007);
  EXPECT_GE(umin, -2.0);
  EXPECT_LT(umax, 3.0);
  EXPECT_NEAR(mean_z, 0.5, 0.01);
  EXPECT_NEAR(var_z, 4.0, 0.03);
}

TEST(Rng, UniformIsExactlyTheTopBitsOfTheStream) {
  // The uniform element g is word g%4 of block g/4, scaled by 2^-24: check one by hand.
  const philox::U32x4 r = philox::philox4x32_10({{2, 0, 0, 0}}, 99, 0);  // block 2 holds g = 8..11
  Tensor t = Tensor::empty({4}, DType::F32);
  fill_uniform(t, 99, 8, 0.0f, 1.0f);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(t.data<float>()[i], static_cast<float>(r.v[i] >> 8) / 16777216.0f);
}

TEST(Rng, RejectsIntegerTensors) {
  Tensor t = Tensor::empty({4}, DType::I32);
  EXPECT_THROW(fill_normal(t, 1, 0, 0, 1), Error);
}

}  // namespace
}  // namespace moelab
