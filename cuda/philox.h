// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
// counter-based generator. The same (seed, index) gives the same numbers on the CPU and the GPU, so
// initialisation and dropout masks do not depend on the device, the thread count or the rank.
// This header is compiled by both g++ (core/rng.cpp) and nvcc (cuda/rng.cu).
//
// Streams (moelab's convention, see core/rng.h):
//   uniform element g: word g%4 of philox(counter = {g/4 lo, g/4 hi, 0, 0}, key = seed)
//   normal  element g: words 0,1 of philox(counter = {g lo, g hi, 1, 0}, key = seed), Box-Muller
//                      evaluated in double and rounded once.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MOELAB_HD __host__ __device__ __forceinline__
#else
#define MOELAB_HD inline
#endif

namespace moelab::philox {

struct U32x4 { uint32_t v[4]; };

MOELAB_HD uint32_t mulhilo(uint32_t a, uint32_t b, uint32_t* hi) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// The Random123 reference constants: round multipliers and the Weyl key increments.
MOELAB_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) { k0 += kW0; k1 += kW1; }
    uint32_t hi0, hi1;
    const uint32_t lo0 = mulhilo(kM0, c.v[0], &hi0);
    const uint32_t lo1 = mulhilo(kM1, c.v[2], &hi1);
    c = U32x4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
  }
  return c;
}

// 24 random bits -> a float in [0, 1): exact, so CPU and GPU agree bit for bit.
MOELAB_HD float bits_to_unit_float(uint32_t w) { return static_cast<float>(w >> 8) * (1.0f / 16777216.0f); }

MOELAB_HD float uniform(uint64_t seed, uint64_t g) {
  const uint64_t block = g >> 2;
  const U32x4 r = philox4x32_10(U32x4{{static_cast<uint32_t>(block), static_cast<uint32_t>(block >> 32), 0u, 0u}},
                                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return bits_to_unit_float(r.v[g & 3]);
}

// A standard normal draw in double. CPU libm and CUDA's log/cos differ by at most an ulp or two of
// a double, so after rounding to float the two devices agree except in rare boundary cases.
MOELAB_HD double normal(uint64_t seed, uint64_t g) {
  const U32x4 r = philox4x32_10(U32x4{{static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), 1u, 0u}},
                                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const double u1 = (static_cast<double>(r.v[0] >> 8) + 1.0) * (1.0 / 16777216.0);  // (0, 1]: log is finite
  const double u2 = static_cast<double>(r.v[1] >> 8) * (1.0 / 16777216.0);          // [0, 1)
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  return sqrt(-2.0 * log(u1)) * cos(kTwoPi * u2);
}

}  // namespace moelab::philox
