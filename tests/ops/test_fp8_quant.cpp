// FP8 tile quantisation (core/ops/fp8_quant.h) on the CPU: values worked out by hand, the
// round-trip bound of the header (and that it is tight), the special blocks (all zero, partial,
// tiny, NaN, Inf) and the argument checks. tests/ops/check_fp8_ml_dtypes.py compares the same
// reference with ml_dtypes' float8_e4m3fn; tests/gpu/test_fp8_quant_cuda.cpp the CUDA op with it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/ops/fp8_quant.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::expect_error;
using testing::rand_uniform;
using testing::randn;

Tensor f32_tensor(const Shape& shape, const std::vector<float>& values) {
  Tensor t = Tensor::empty(shape, DType::F32);
  std::copy(values.begin(), values.end(), t.data<float>());
  return t;
}

struct Quantized {
  Tensor q, scales, y;
};

// Quantise x [N, D] and dequantise the result back to f32.
Quantized round_trip(const Tensor& x) {
  const int64_t N = x.size(0), D = x.size(1);
  Quantized r{Tensor::empty({N, D}, DType::FP8_E4M3), Tensor::empty({N, fp8_num_blocks(D)}, DType::F32),
              Tensor::empty({N, D}, DType::F32)};
  fp8_quantize(Exec{}, x, r.q, r.scales);
  fp8_dequantize(Exec{}, r.q, r.scales, r.y);
  return r;
}

uint8_t qbits(const Quantized& r, int64_t i) { return r.q.data<fp8_e4m3_t>()[i].bits; }

// Normal values whose size varies over many orders of magnitude: each block by 2^U(-40, 40), each
// element by 2^U(-20, 0), so some land in e4m3's subnormals and some flush to zero.
Tensor wide_rows(int64_t N, int64_t D, uint64_t seed) {
  Tensor x = randn({N, D}, DType::F32, seed);
  const Tensor block_exp = rand_uniform({N, fp8_num_blocks(D)}, DType::F32, seed + 1, -40.0f, 40.0f);
  const Tensor elem_exp = rand_uniform({N, D}, DType::F32, seed + 2, -20.0f, 0.0f);
  float* p = x.data<float>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d)
      p[n * D + d] *= std::exp2(block_exp.data<float>()[n * fp8_num_blocks(D) + d / kFp8BlockSize]) *
                      std::exp2(elem_exp.data<float>()[n * D + d]);
  return x;
}

// Scales that are powers of two make every x / scale exact, so each q below is worked out by hand.
TEST(Fp8Quant, KnownValues) {
  // Row 0: amax 7 -> scale 7 / 448 = 2^-6; x / scale = 224, -448, 16, 112, all exact in e4m3.
  // Row 1: amax 448 -> scale 1; 17 and 19 are ties (e4m3 steps by 2 in [16, 32)): 17 -> 16 (even
  // mantissa 0), 19 -> 20 (even mantissa 2); 300 -> 288 (steps by 32 in [256, 448]); -1.5 * 2^-9 is
  // a subnormal tie -> -2^-8 (mantissa 2); 2^-10 is the tie between 0 and 2^-9 -> 0.
  const Tensor x = f32_tensor({2, 6}, {3.5f, -7.0f, 0.25f, 1.75f, 0.0f, -0.0f,  //
                                       448.0f, 17.0f, 19.0f, 300.0f, -0.0029296875f, 0.0009765625f});
  const Quantized r = round_trip(x);
  EXPECT_EQ(r.scales.data<float>()[0], 0.015625f);
  EXPECT_EQ(r.scales.data<float>()[1], 1.0f);
  const std::vector<uint8_t> want_q = {0x76, 0xfe, 0x58, 0x6e, 0x00, 0x80,  // -0 keeps its sign
                                       0x7e, 0x58, 0x5a, 0x79, 0x82, 0x00};
  const std::vector<float> want_y = {3.5f, -7.0f, 0.25f, 1.75f, 0.0f, -0.0f,  //
                                     448.0f, 16.0f, 20.0f, 288.0f, -0.00390625f, 0.0f};
  for (int64_t i = 0; i < 12; ++i) {
    EXPECT_EQ(qbits(r, i), want_q[i]) << "q at flat index " << i;
    EXPECT_EQ(r.y.data<float>()[i], want_y[i]) << "y at flat index " << i;
    EXPECT_EQ(std::signbit(r.y.data<float>()[i]), std::signbit(want_y[i])) << "sign of y at " << i;
  }
}

// A scale that is not a power of two: amax = 1 -> scale = fl(1 / 448); x / scale in f32, then e4m3.
TEST(Fp8Quant, ScaleIsAmaxOver448InF32) {
  const Tensor x = f32_tensor({1, 3}, {1.0f, -0.3f, 0.01f});
  const Quantized r = round_trip(x);
  const float scale = 1.0f / 448.0f;
  EXPECT_EQ(r.scales.data<float>()[0], scale);
  for (int64_t i = 0; i < 3; ++i)
    EXPECT_EQ(qbits(r, i), float_to_fp8_e4m3_bits(x.data<float>()[i] / scale)) << "at " << i;
  EXPECT_EQ(qbits(r, 0), 0x7e);
}

// amax / scale lands within a few f32 ulps of 448 and rounds to 448 by itself: far below 464, the
// midpoint to the next (nonexistent) e4m3 step, where saturation would start to decide values.
TEST(Fp8Quant, SaturationNeverTriggersAtAmax) {
  const Tensor mant = rand_uniform({4000}, DType::F32, 31, 1.0f, 2.0f);
  const Tensor expo = rand_uniform({4000}, DType::F32, 32, -100.0f, 100.0f);
  double worst = 0;
  for (int64_t i = 0; i < 4000; ++i) {
    const float amax = std::ldexp(mant.data<float>()[i], static_cast<int>(expo.data<float>()[i]));
    const float scale = std::max(amax / kFp8E4M3Max, FLT_MIN);
    const float v = amax / scale;
    worst = std::max(worst, std::fabs(static_cast<double>(v) - 448.0));
    ASSERT_LE(std::fabs(static_cast<double>(v) - 448.0), 448.0 * std::ldexp(1.0, -22)) << "amax " << amax;
    const Quantized r = round_trip(f32_tensor({1, 2}, {-amax, 0.5f * amax}));
    ASSERT_EQ(qbits(r, 0), 0xfe) << "amax " << amax;
    ASSERT_EQ(r.scales.data<float>()[0], scale);
  }
  std::printf("max |amax / scale - 448| = %.3g (an f32 ulp at 448 is %.3g)\n", worst, std::ldexp(1.0, -15));
}

// The header's bound, element by element, on wide random data with a partial block (D = 200); the
// bound is tight: some element comes within 10% of it.
TEST(Fp8Quant, RoundTripErrorBound) {
  const int64_t N = 64, D = 200, nb = fp8_num_blocks(D);
  const Tensor x = wide_rows(N, D, 41);
  const Quantized r = round_trip(x);
  double worst_ratio = 0;
  int64_t worst_at = -1;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) {
      const int64_t i = n * D + d;
      const float xv = x.data<float>()[i], scale = r.scales.data<float>()[n * nb + d / kFp8BlockSize];
      const float v = xv / scale;
      const double h = std::fabs(v) >= 0.015625f ? std::ldexp(1.0, std::ilogb(v) - 4) : std::ldexp(1.0, -10);
      const double bound = scale * h + std::ldexp(std::fabs(static_cast<double>(xv)), -22);
      const double err = std::fabs(static_cast<double>(r.y.data<float>()[i]) - xv);
      ASSERT_LE(err, bound) << "at [" << n << "," << d << "]: x " << xv << ", y " << r.y.data<float>()[i] << ", scale "
                            << scale;
      if (err / bound > worst_ratio) worst_ratio = err / bound, worst_at = i;
    }
  std::printf("max |y - x| / bound = %.4f at flat index %lld\n", worst_ratio, static_cast<long long>(worst_at));
  EXPECT_GT(worst_ratio, 0.9);
}

// D = 300: blocks [0, 128), [128, 256), [256, 300). Each scale sees only its own channels: the
// partial last block gets its own amax, and an all-zero middle block gets scale 1 and q = 0.
TEST(Fp8Quant, BlocksAreIndependentZeroAndPartial) {
  const int64_t D = 300;
  Tensor x = randn({2, D}, DType::F32, 51);
  float* p = x.data<float>();
  for (int64_t d = 0; d < D; ++d) {
    p[d] *= d < 128 ? 1000.0f : 0.001f;  // row 0: a large first block beside small ones
    if (d >= 128 && d < 256) p[D + d] = 0.0f;
  }
  p[D + 299] = -50.0f;  // row 1: the last channel holds the partial block's amax
  const Quantized r = round_trip(x);
  const float* s = r.scales.data<float>();
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t b = 0; b < 3; ++b) {
      float amax = 0;
      for (int64_t d = b * 128; d < std::min<int64_t>(D, b * 128 + 128); ++d) amax = std::max(amax, std::fabs(p[n * D + d]));
      EXPECT_EQ(s[n * 3 + b], amax == 0 ? 1.0f : amax / 448.0f) << "scale [" << n << "," << b << "]";
    }
  EXPECT_EQ(s[3 + 2], 50.0f / 448.0f);
  EXPECT_EQ(qbits(r, D + 299), 0xfe);
  EXPECT_EQ(s[3 + 1], 1.0f);
  for (int64_t d = 128; d < 256; ++d) {
    EXPECT_EQ(qbits(r, D + d), 0x00);
    EXPECT_EQ(r.y.data<float>()[D + d], 0.0f);
  }
}

// q(-x) is q(x) with the sign bit set, the scales are the same, and y(-x) = -y(x).
TEST(Fp8Quant, NegationFlipsOnlyTheSign) {
  const Tensor x = wide_rows(8, 200, 61);
  Tensor neg = Tensor::empty(x.shape(), DType::F32);
  for (int64_t i = 0; i < neg.numel(); ++i) neg.data<float>()[i] = -x.data<float>()[i];
  const Quantized a = round_trip(x), b = round_trip(neg);
  for (int64_t i = 0; i < a.scales.numel(); ++i) EXPECT_EQ(a.scales.data<float>()[i], b.scales.data<float>()[i]);
  for (int64_t i = 0; i < x.numel(); ++i) {
    ASSERT_EQ(qbits(b, i), qbits(a, i) ^ 0x80) << "at " << i;
    ASSERT_EQ(b.y.data<float>()[i], -a.y.data<float>()[i]) << "at " << i;
  }
}

// An f64 x is rounded to f32 first: the same q and scales as its f32 copy. An f64 y is the exact
// product float(q) * scale, and an f32 y is that product rounded once.
TEST(Fp8Quant, F64IsF32Rounded) {
  const Tensor x64 = randn({4, 200}, DType::F64, 71, 3.0);
  const Quantized a = round_trip(x64.to(DType::F32));
  Tensor q = Tensor::empty({4, 200}, DType::FP8_E4M3), s = Tensor::empty({4, 2}, DType::F32);
  Tensor y64 = Tensor::empty({4, 200}, DType::F64);
  fp8_quantize(Exec{}, x64, q, s);
  fp8_dequantize(Exec{}, q, s, y64);
  for (int64_t i = 0; i < s.numel(); ++i) EXPECT_EQ(s.data<float>()[i], a.scales.data<float>()[i]);
  for (int64_t i = 0; i < q.numel(); ++i) {
    ASSERT_EQ(q.data<fp8_e4m3_t>()[i].bits, qbits(a, i)) << "at " << i;
    const double exact = static_cast<double>(fp8_e4m3_bits_to_float(q.data<fp8_e4m3_t>()[i].bits)) *
                         static_cast<double>(s.data<float>()[i / 200 * 2 + i % 200 / 128]);
    ASSERT_EQ(y64.data<double>()[i], exact) << "at " << i;
    ASSERT_EQ(a.y.data<float>()[i], static_cast<float>(exact)) << "at " << i;  // one rounding of the same product
  }
}

// amax < 448 * 2^-126: the scale is clamped to 2^-126 (amax / 448 would lose bits or flush to zero),
// x / scale = x * 2^126 exactly; f32 subnormal inputs included.
TEST(Fp8Quant, TinyBlockScaleIsSmallestNormal) {
  const float tiny = 1e-37f, sub = 3e-41f;  // 1e-37 < 448 * 2^-126 ~ 5.3e-36; 3e-41 is an f32 subnormal
  const Tensor x = f32_tensor({2, 2}, {tiny, -0.25f * tiny, sub, -sub / 3});
  const Quantized r = round_trip(x);
  for (int64_t n = 0; n < 2; ++n) EXPECT_EQ(r.scales.data<float>()[n], FLT_MIN);
  for (int64_t i = 0; i < 4; ++i)
    EXPECT_EQ(qbits(r, i), float_to_fp8_e4m3_bits(std::ldexp(x.data<float>()[i], 126))) << "at " << i;
  EXPECT_LT(std::ldexp(tiny, 126), 448.0f);
}

// A NaN or an infinity poisons its block, and only its block: scale NaN / +Inf, every q NaN (0x7f),
// y NaN; the other block of the row is quantised as usual.
TEST(Fp8Quant, NonFiniteBlockIsPoisoned) {
  const int64_t D = 256;
  Tensor x = randn({3, D}, DType::F32, 81);
  float* p = x.data<float>();
  p[5] = std::nanf("");
  p[D + 130] = -INFINITY;
  p[2 * D + 7] = INFINITY;
  p[2 * D + 8] = std::nanf("");  // NaN wins over an infinity in the same block
  const Quantized r = round_trip(x);
  const float* s = r.scales.data<float>();
  EXPECT_TRUE(std::isnan(s[0]));
  EXPECT_EQ(s[3], INFINITY);
  EXPECT_TRUE(std::isnan(s[4]));
  for (const auto& [n, b] : std::vector<std::pair<int, int>>{{0, 0}, {1, 1}, {2, 0}})
    for (int64_t d = b * 128; d < b * 128 + 128; ++d) {
      ASSERT_EQ(qbits(r, n * D + d), 0x7f) << "[" << n << "," << d << "]";
      ASSERT_TRUE(std::isnan(r.y.data<float>()[n * D + d])) << "[" << n << "," << d << "]";
    }
  for (const auto& [n, b] : std::vector<std::pair<int, int>>{{0, 1}, {1, 0}, {2, 1}}) {
    EXPECT_TRUE(std::isfinite(s[n * 2 + b]));
    for (int64_t d = b * 128; d < b * 128 + 128; ++d) ASSERT_TRUE(std::isfinite(r.y.data<float>()[n * D + d]));
  }
}

TEST(Fp8Quant, RejectsBadArguments) {
  const Tensor x = randn({3, 200}, DType::F32, 91);
  const Tensor q = Tensor::empty({3, 200}, DType::FP8_E4M3), s = Tensor::empty({3, 2}, DType::F32);
  const Tensor y = Tensor::empty({3, 200}, DType::F32);
  expect_error([&] { fp8_quantize(Exec{}, x.reshape({600}), q, s); }, "fp8_quantize: x is f32[600]@cpu, expected 2..2 dims");
  expect_error([&] { fp8_quantize(Exec{}, x.to(DType::BF16), q, s); }, "x is bf16[3,200]@cpu, expected f32 or f64 on the CPU");
  expect_error([&] { fp8_quantize(Exec{}, Tensor::empty({3, 200}, DType::I32), q, s); }, "expected f32 or f64 on the CPU");
  expect_error([&] { fp8_quantize(Exec{}, x, Tensor::empty({3, 201}, DType::FP8_E4M3), s); },
               "q is fp8_e4m3[3,201]@cpu, expected shape [3,200]");
  expect_error([&] { fp8_quantize(Exec{}, x, Tensor::empty({3, 200}, DType::BF16), s); },
               "q is bf16[3,200]@cpu, expected dtype fp8_e4m3");
  expect_error([&] { fp8_quantize(Exec{}, x, q, Tensor::empty({3, 1}, DType::F32)); },
               "scales is f32[3,1]@cpu, expected shape [3,2] (one scale per 128 channels of each row of q)");
  expect_error([&] { fp8_quantize(Exec{}, x, q, Tensor::empty({3, 2}, DType::F64)); },
               "scales is f64[3,2]@cpu, expected dtype f32");
  expect_error([&] { fp8_dequantize(Exec{}, q, s, Tensor::empty({3, 200}, DType::BF16)); },
               "fp8_dequantize: y is bf16[3,200]@cpu, expected f32 or f64 on the CPU");
  expect_error([&] { fp8_dequantize(Exec{}, q, s, Tensor::empty({2, 200}, DType::F32)); },
               "fp8_dequantize: q is fp8_e4m3[3,200]@cpu, expected shape [2,200]");
  expect_error([&] { fp8_dequantize(Exec{}, q.reshape({600}), s, y); }, "q is fp8_e4m3[600]@cpu, expected shape [3,200]");
  expect_error([&] { fp8_dequantize(Exec{}, q, s.reshape({6}), y); }, "scales is f32[6]@cpu, expected shape [3,2]");
}


// Tiles other than 1 x 128 rows, transposition and power-of-two scales: the quantisation of each
// is checked against the plain Row128 quantisation of a matrix built to hold the same tile.

// x [R, C] quantised with `how` (q in q's layout), and dequantised back.
Quantized quantize_as(const Tensor& x, Fp8Quant how) {
  const int64_t r = how.transpose ? x.size(1) : x.size(0), c = how.transpose ? x.size(0) : x.size(1);
  Quantized out{Tensor::empty({r, c}, DType::FP8_E4M3), Tensor::empty(fp8_scales_shape(r, c, how.tile), DType::F32),
                Tensor::empty({r, c}, DType::F32)};
  fp8_quantize(Exec{}, x, out.q, out.scales, how);
  fp8_dequantize(Exec{}, out.q, out.scales, out.y, how.tile);
  return out;
}

Tensor transposed(const Tensor& x) {
  const int64_t R = x.size(0), C = x.size(1);
  Tensor t = Tensor::empty({C, R}, DType::F32);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) t.data<float>()[c * R + r] = x.data<float>()[r * C + c];
  return t;
}

// Each 128 x 128 block (partial ones at the edges included) has the scale of its own amax, and
// every q is its element over that scale.
TEST(Fp8Quant, Block128SharesOneScalePerBlockIncludingPartialOnes) {
  const int64_t R = 200, C = 300;  // blocks of 128 x 128, 128 x 44, 72 x 128, 72 x 44
  const Tensor x = wide_rows(R, C, 31);
  const Quantized b = quantize_as(x, {Fp8Tile::Block128, false, false});
  ASSERT_EQ(b.scales.shape(), (Shape{2, 3}));
  for (int64_t br = 0; br < 2; ++br)
    for (int64_t bc = 0; bc < 3; ++bc) {
      float amax = 0.0f;
      for (int64_t r = br * 128; r < std::min(R, br * 128 + 128); ++r)
        for (int64_t c = bc * 128; c < std::min(C, bc * 128 + 128); ++c)
          amax = std::max(amax, std::fabs(x.data<float>()[r * C + c]));
      const float scale = b.scales.data<float>()[br * 3 + bc];
      EXPECT_EQ(scale, amax / 448.0f) << "block " << br << "," << bc;
      for (int64_t r = br * 128; r < std::min(R, br * 128 + 128); ++r)
        for (int64_t c = bc * 128; c < std::min(C, bc * 128 + 128); ++c)
          ASSERT_EQ(qbits(b, r * C + c), float_to_fp8_e4m3_bits(x.data<float>()[r * C + c] / scale))
              << "element " << r << "," << c;
    }
  // Dequantisation multiplies by the block's scale.
  for (int64_t i : {int64_t{0}, int64_t{129 * C + 7}, R * C - 1})
    EXPECT_EQ(b.y.data<float>()[i], fp8_e4m3_bits_to_float(qbits(b, i)) * b.scales.data<float>()[(i / C / 128) * 3 + (i % C) / 128]);
}

TEST(Fp8Quant, Block128NonFiniteValuePoisonsItsWholeBlockOnly) {
  Tensor x = randn({200, 300}, DType::F32, 5);
  x.data<float>()[150 * 300 + 290] = NAN;       // block (1, 2)
  x.data<float>()[3 * 300 + 130] = -INFINITY;   // block (0, 1)
  const Quantized b = quantize_as(x, {Fp8Tile::Block128, false, false});
  const float* s = b.scales.data<float>();
  EXPECT_TRUE(std::isnan(s[1 * 3 + 2]));
  EXPECT_EQ(s[0 * 3 + 1], INFINITY);
  for (int64_t i : {0, 2, 3, 4}) EXPECT_TRUE(std::isfinite(s[i])) << "block " << i;
  for (int64_t r : {int64_t{0}, int64_t{127}})
    for (int64_t c : {int64_t{128}, int64_t{255}}) EXPECT_EQ(qbits(b, r * 300 + c), 0x7f);
  for (int64_t r : {int64_t{128}, int64_t{199}}) EXPECT_EQ(qbits(b, r * 300 + 256), 0x7f);
  EXPECT_NE(qbits(b, 128 * 300 + 255), 0x7f);  // block (1, 1): untouched
}

TEST(Fp8Quant, TransposeQuantisesTheTransposedMatrix) {
  const Tensor x = wide_rows(130, 300, 41);  // tiles over x^T [300, 130]: 128 + 2 wide, 128 + 128 + 44 high
  for (Fp8Tile tile : {Fp8Tile::Row128, Fp8Tile::Block128}) {
    const Quantized t = quantize_as(x, {tile, true, false}), direct = quantize_as(transposed(x), {tile, false, false});
    ASSERT_EQ(t.q.shape(), (Shape{300, 130}));
    ASSERT_EQ(std::memcmp(t.q.raw(), direct.q.raw(), t.q.nbytes()), 0);
    ASSERT_EQ(std::memcmp(t.scales.raw(), direct.scales.raw(), t.scales.nbytes()), 0);
  }
  // Block128 of x^T is Block128 of x transposed: the weight's two GEMMs share one quantisation.
  const Quantized bt = quantize_as(x, {Fp8Tile::Block128, true, false}), b = quantize_as(x, {Fp8Tile::Block128, false, false});
  for (int64_t r = 0; r < 130; ++r)
    for (int64_t c = 0; c < 300; ++c) ASSERT_EQ(qbits(b, r * 300 + c), qbits(bt, c * 130 + r));
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(b.scales.data<float>()[i * 3 + j], bt.scales.data<float>()[j * 2 + i]);
}

TEST(Fp8Quant, Pow2ScalesAreTheSmallestPowerOfTwoAtOrAboveAmaxOver448) {
  const Tensor x = wide_rows(64, 300, 51);
  for (Fp8Tile tile : {Fp8Tile::Row128, Fp8Tile::Block128}) {
    const Quantized p = quantize_as(x, {tile, false, true}), a = quantize_as(x, {tile, false, false});
    for (int64_t i = 0; i < p.scales.numel(); ++i) {
      const float s = p.scales.data<float>()[i], amax_scale = a.scales.data<float>()[i];
      int e;
      ASSERT_EQ(std::frexp(s, &e), 0.5f) << s << " is not a power of two";
      EXPECT_GE(s, amax_scale);
      EXPECT_LT(s, 2.0f * amax_scale);
    }
    // x / scale is exact with a power-of-two scale, and y = q * scale has one rounding (e4m3's).
    for (int64_t i = 0; i < x.numel(); i += 7) {
      const int64_t r = i / 300, c = i % 300;
      const float s = p.scales.data<float>()[(tile == Fp8Tile::Row128 ? r : r / 128) * 3 + c / 128];
      EXPECT_EQ(qbits(p, i), float_to_fp8_e4m3_bits(std::ldexp(x.data<float>()[i], -std::ilogb(s))));
    }
  }
  // An amax of exactly 448 * 2^k gives the scale 2^k itself.
  Tensor exact = Tensor::zeros({1, 128}, DType::F32);
  exact.data<float>()[5] = 448.0f * 0.25f;
  EXPECT_EQ(quantize_as(exact, {Fp8Tile::Row128, false, true}).scales.data<float>()[0], 0.25f);
}

// The CPU GEMM emulation's one-pass round trip is the two ops' bit for bit, in place too.
TEST(Fp8Quant, FakeQuantizeIsQuantizeThenDequantize) {
  Tensor x = wide_rows(200, 300, 61);
  x.data<float>()[7 * 300 + 5] = NAN;
  x.data<float>()[150 * 300 + 260] = INFINITY;
  for (Fp8Tile tile : {Fp8Tile::Row128, Fp8Tile::Block128})
    for (bool pow2 : {false, true}) {
      const Quantized want = quantize_as(x, {tile, false, pow2});
      Tensor y = Tensor::empty({200, 300}, DType::F32), in_place = Tensor::empty({200, 300}, DType::F32);
      in_place.copy_from(x);
      ref::fp8_fake_quantize(x.data<float>(), y.data<float>(), 200, 300, tile, pow2);
      ref::fp8_fake_quantize(in_place.data<float>(), in_place.data<float>(), 200, 300, tile, pow2);
      for (int64_t i = 0; i < x.numel(); ++i) {
        const float w = want.y.data<float>()[i];
        ASSERT_TRUE(float_bits(y.data<float>()[i]) == float_bits(w) || (std::isnan(w) && std::isnan(y.data<float>()[i])))
            << "element " << i << ": " << y.data<float>()[i] << " vs " << w;
        ASSERT_EQ(float_bits(in_place.data<float>()[i]), float_bits(y.data<float>()[i])) << "element " << i;
      }
    }
}

TEST(Fp8Quant, RejectsScalesOfTheWrongTiling) {
  const Tensor x = randn({200, 300}, DType::F32, 1), q = Tensor::empty({200, 300}, DType::FP8_E4M3);
  expect_error([&] { fp8_quantize(Exec{}, x, q, Tensor::empty({200, 3}, DType::F32), {Fp8Tile::Block128}); },
               "scales is f32[200,3]@cpu, expected shape [2,3] (one scale per 128 x 128 block of q)");
  expect_error([&] { fp8_quantize(Exec{}, x, q, Tensor::empty({200, 3}, DType::F32), {Fp8Tile::Row128, true}); },
               "fp8_quantize: q is fp8_e4m3[200,300]@cpu, expected shape [300,200]");
}

}  // namespace
}  // namespace moelab
