// Element types and the scalar conversions between them.
//
// bf16: the upper 16 bits of an IEEE float, rounded to nearest even; NaN stays a (quiet) NaN,
//       overflow rounds to infinity as IEEE says.
// fp8 e4m3 (OCP "E4M3FN", the Hopper tensor-core format): 1 sign, 4 exponent (bias 7), 3 mantissa
//       bits; no infinities; S.1111.111 is NaN; largest finite 448; smallest subnormal 2^-9.
//       float -> e4m3 rounds to nearest even and SATURATES: |x| > 448 and +-Inf become +-448
//       (CUDA's __NV_SATFINITE rule), NaN becomes NaN. FP8 training scales tensors so that their
//       largest element maps to 448, so saturation only bites on a bad scale.
// fp8 e5m2 (OCP "E5M2"): 1 sign, 5 exponent (bias 15), 2 mantissa bits; infinities and NaNs as
//       IEEE; largest finite 57344; smallest subnormal 2^-16. float -> e5m2 rounds to nearest even
//       and saturates the same way (+-Inf included: +-57344). Only the scalar conversions exist
//       (no tensor dtype): DeepSeek-V3 trains in e4m3 throughout, and tests compare the two.
// f64 exists for the CPU gradient checks only (no CUDA kernels take it).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

namespace moelab {

enum class DType : uint8_t { F32, F64, BF16, FP8_E4M3, I32 };

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::FP8_E4M3: return 1;
    case DType::I32: return 4;
  }
  return 0;
}

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::F64: return "f64";
    case DType::BF16: return "bf16";
    case DType::FP8_E4M3: return "fp8_e4m3";
    case DType::I32: return "i32";
  }
  return "?";
}

// Parses "f32", "f64", "bf16", "fp8_e4m3", "i32"; throws moelab::Error naming the bad value.
DType dtype_from_name(const std::string& name);

// The C++ type that stores one element of each dtype.
struct bf16_t { uint16_t bits; };
struct fp8_e4m3_t { uint8_t bits; };

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::F64; };
template <> struct dtype_of<bf16_t> { static constexpr DType value = DType::BF16; };
template <> struct dtype_of<fp8_e4m3_t> { static constexpr DType value = DType::FP8_E4M3; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::I32; };

inline uint32_t float_bits(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float bits_float(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }

inline uint16_t float_to_bf16_bits(float x) {
  uint32_t u = float_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to the even upper half
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// The conversions work on the f32 bits (they run once per element of every FP8 GEMM operand of
// the CPU emulation, so no double arithmetic, frexp or ldexp). A normal result rounds the 23-bit
// mantissa to the format's width, nearest even, by adding just under half an ulp (plus the kept
// LSB) and truncating; a carry moves into the exponent by itself. A subnormal result is
// m * 2^-(subnormal exponent), m = nearbyint(|x| * 2^that): exact scaling, then the default
// rounding mode (nearest even).
inline uint8_t float_to_fp8_e4m3_bits(float x) {
  const uint32_t u = float_bits(x), a = u & 0x7fffffffu;
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  if (a > 0x7f800000u) return sign | 0x7fu;                // NaN
  if (a >= 0x43e00000u) return sign | 0x7eu;               // >= 448 (and Inf): saturate
  if (a < 0x3c800000u)                                     // below 2^-6: m * 2^-9, m in 0..8 (8 is 0x08,
    return sign | static_cast<uint8_t>(std::nearbyint(bits_float(a) * 512.0f));  // the smallest normal)
  const uint32_t rebased = a - ((127u - 7u) << 23);        // exponent bias 127 -> 7
  return sign | static_cast<uint8_t>((rebased + 0x7ffffu + ((rebased >> 20) & 1u)) >> 20);  // < 448: <= 0x7e
}

inline float fp8_e4m3_bits_to_float(uint8_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24, exp_field = (b >> 3) & 0xfu, mant = b & 0x7u;
  if (exp_field == 0xf && mant == 0x7) return std::nanf("");
  if (exp_field == 0) return bits_float(sign | float_bits(static_cast<float>(mant) * 0x1p-9f));
  return bits_float(sign | ((exp_field + 127u - 7u) << 23) | (mant << 20));
}

inline uint8_t float_to_fp8_e5m2_bits(float x) {
  const uint32_t u = float_bits(x), a = u & 0x7fffffffu;
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  if (a > 0x7f800000u) return sign | 0x7fu;                // NaN
  if (a >= 0x47600000u) return sign | 0x7bu;               // >= 57344 (and Inf): saturate
  if (a < 0x38800000u)                                     // below 2^-14: m * 2^-16, m in 0..4
    return sign | static_cast<uint8_t>(std::nearbyint(bits_float(a) * 65536.0f));
  const uint32_t rebased = a - ((127u - 15u) << 23);       // exponent bias 127 -> 15
  return sign | static_cast<uint8_t>((rebased + 0xfffffu + ((rebased >> 21) & 1u)) >> 21);  // <= 0x7b
}

inline float fp8_e5m2_bits_to_float(uint8_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x80u) << 24, exp_field = (b >> 2) & 0x1fu, mant = b & 0x3u;
  if (exp_field == 0x1f) return mant == 0 ? bits_float(sign | 0x7f800000u) : std::nanf("");
  if (exp_field == 0) return bits_float(sign | float_bits(static_cast<float>(mant) * 0x1p-16f));
  return bits_float(sign | ((exp_field + 127u - 15u) << 23) | (mant << 21));
}

// Generic element <-> double access, used by copies between dtypes and by tests.
template <typename T> inline double to_double(T x) { return static_cast<double>(x); }
template <> inline double to_double(bf16_t x) { return bf16_bits_to_float(x.bits); }
template <> inline double to_double(fp8_e4m3_t x) { return fp8_e4m3_bits_to_float(x.bits); }

template <typename T> inline T from_float(float x) { return static_cast<T>(x); }
template <> inline bf16_t from_float(float x) { return bf16_t{float_to_bf16_bits(x)}; }
template <> inline fp8_e4m3_t from_float(float x) { return fp8_e4m3_t{float_to_fp8_e4m3_bits(x)}; }

}  // namespace moelab
