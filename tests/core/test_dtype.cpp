// bf16 and fp8-e4m3 conversions against known bit patterns (worked out by hand from the formats,
// not produced by the code under test), including ties-to-even, subnormals, saturation and NaN.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/check.h"
#include "core/dtype.h"

namespace moelab {
namespace {

struct Bf16Case { uint32_t f32_bits; uint16_t bf16_bits; const char* what; };

TEST(DType, Bf16FromFloatKnownBits) {
  const Bf16Case cases[] = {
      {0x3f800000u, 0x3f80, "1.0"},
      {0xbf800000u, 0xbf80, "-1.0"},
      {0x00000000u, 0x0000, "+0"},
      {0x80000000u, 0x8000, "-0"},
      {0x3f808000u, 0x3f80, "1 + 2^-8: tie, keeps even 0x3f80"},
      {0x3f818000u, 0x3f82, "1 + 3*2^-8: tie, rounds up to even 0x3f82"},
      {0x3f808001u, 0x3f81, "just above the tie rounds up"},
      {0x3f807fffu, 0x3f80, "just below the tie rounds down"},
      {0x40490fdbu, 0x4049, "pi -> 3.140625"},
      {0x7f800000u, 0x7f80, "+inf"},
      {0xff800000u, 0xff80, "-inf"},
      {0x7f7fffffu, 0x7f80, "FLT_MAX rounds to +inf"},
      {0x7f7f7fffu, 0x7f7f, "largest value that stays finite"},
      {0x00000001u, 0x0000, "smallest subnormal rounds to +0"},
      {0x00018000u, 0x0002, "subnormal tie rounds to even"},
      {0x00400000u, 0x0040, "subnormal exactly representable"},
  };
  for (const auto& c : cases)
    EXPECT_EQ(float_to_bf16_bits(bits_float(c.f32_bits)), c.bf16_bits) << c.what << " (f32 bits 0x" << std::hex << c.f32_bits << ")";
}

TEST(DType, Bf16NaNStaysNaN) {
  for (uint32_t bits : {0x7fc00000u, 0x7f800001u, 0xffc00001u, 0x7fffffffu}) {
    const uint16_t b = float_to_bf16_bits(bits_float(bits));
    EXPECT_TRUE(std::isnan(bf16_bits_to_float(b))) << std::hex << bits << " -> " << b;
    EXPECT_EQ(b & 0x8000, (bits >> 16) & 0x8000) << "sign kept";
  }
  // A signalling NaN whose payload sits only in the low bits must not round to infinity.
  EXPECT_EQ(float_to_bf16_bits(bits_float(0x7f800001u)), 0x7fc0);
}

TEST(DType, Bf16ToFloatIsExactAndRoundTrips) {
  EXPECT_EQ(bf16_bits_to_float(0x3f80), 1.0f);
  EXPECT_EQ(bf16_bits_to_float(0xc000), -2.0f);
  EXPECT_EQ(bf16_bits_to_float(0x0001), std::ldexp(1.0f, -133));
  for (uint32_t b = 0; b <= 0xffff; ++b) {
    const float f = bf16_bits_to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_bf16_bits(f), b) << "bf16 0x" << std::hex << b;
  }
}

struct Fp8Case { float value; uint8_t bits; const char* what; };

TEST(DType, Fp8E4m3FromFloatKnownBits) {
  const float inf = std::numeric_limits<float>::infinity();
  const Fp8Case cases[] = {
      {1.0f, 0x38, "1.0 = 2^0: exponent field 7"},
      {-1.0f, 0xb8, "-1.0"},
      {0.0f, 0x00, "+0"},
      {-0.0f, 0x80, "-0"},
      {1.125f, 0x39, "1 + 1/8"},
      {1.0625f, 0x38, "1 + 1/16: tie, keeps even mantissa 0"},
      {1.1875f, 0x3a, "1 + 3/16: tie, rounds to even mantissa 2"},
      {240.0f, 0x77, "1.875 * 2^7"},
      {448.0f, 0x7e, "largest finite: 1.75 * 2^8"},
      {-448.0f, 0xfe, "-448"},
      {440.0f, 0x7e, "between 416 and 448, nearer 448"},
      {420.0f, 0x7d, "between 416 and 448, nearer 416"},
      {500.0f, 0x7e, "overflow saturates to 448"},
      {1e30f, 0x7e, "large overflow saturates"},
      {inf, 0x7e, "+inf saturates to 448"},
      {-inf, 0xfe, "-inf saturates to -448"},
      {0.015625f, 0x08, "2^-6: smallest normal"},
      {0.013671875f, 0x07, "7 * 2^-9: largest subnormal"},
      {0.001953125f, 0x01, "2^-9: smallest subnormal"},
      {0.0009765625f, 0x00, "2^-10: tie between 0 and 2^-9, rounds to even 0"},
      {0.0029296875f, 0x02, "3 * 2^-10: tie between 1 and 2 * 2^-9, rounds to even 2"},
      {0.0146484375f, 0x08, "7.5 * 2^-9: tie, rounds up into the smallest normal"},
      {0.0001f, 0x00, "underflow to +0"},
      {-0.0001f, 0x80, "underflow to -0"},
      {0.1f, 0x1d, "0.1 -> 0.1015625 = 1.625 * 2^-4"},
      {15.5f, 0x58, "15.5: tie between 15 (m=7) and 16 (carry into the exponent, m=0): even gives 16"},
  };
  for (const auto& c : cases)
    EXPECT_EQ(float_to_fp8_e4m3_bits(c.value), c.bits)
        << c.what << ": got 0x" << std::hex << int(float_to_fp8_e4m3_bits(c.value)) << ", expected 0x" << int(c.bits);
}

TEST(DType, Fp8E4m3NaN) {
  EXPECT_EQ(float_to_fp8_e4m3_bits(std::nanf("")), 0x7f);
  EXPECT_EQ(float_to_fp8_e4m3_bits(-std::nanf("")), 0xff);
  EXPECT_TRUE(std::isnan(fp8_e4m3_bits_to_float(0x7f)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_bits_to_float(0xff)));
}

TEST(DType, Fp8E4m3DecodeKnownValues) {
  EXPECT_EQ(fp8_e4m3_bits_to_float(0x38), 1.0f);
  EXPECT_EQ(fp8_e4m3_bits_to_float(0x7e), 448.0f);
  EXPECT_EQ(fp8_e4m3_bits_to_float(0x78), 256.0f);  // 0x78 is a number in E4M3FN (no infinities)
  EXPECT_EQ(fp8_e4m3_bits_to_float(0x08), 0.015625f);
  EXPECT_EQ(fp8_e4m3_bits_to_float(0x01), 0.001953125f);
  EXPECT_EQ(fp8_e4m3_bits_to_float(0xc4), -3.0f);  // 1.5 * 2^1
}

TEST(DType, Fp8E4m3EveryCodeRoundTrips) {
  for (uint32_t b = 0; b < 256; ++b) {
    const float f = fp8_e4m3_bits_to_float(static_cast<uint8_t>(b));
    if (std::isnan(f)) continue;
    EXPECT_EQ(float_to_fp8_e4m3_bits(f), b) << "code 0x" << std::hex << b << " = " << f;
  }
}

TEST(DType, NamesAndSizes) {
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::FP8_E4M3), 1u);
  EXPECT_EQ(dtype_from_name("bf16"), DType::BF16);
  EXPECT_EQ(dtype_from_name("fp8_e4m3"), DType::FP8_E4M3);
  try {
    dtype_from_name("fp16");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fp16"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moelab
