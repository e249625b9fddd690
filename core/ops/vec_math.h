// exp, sigmoid and sums written so that a loop over them vectorises. exp and sigmoid: straight-line
// arithmetic, no branches, no libm call, the same operations for every element (their selects need
// the file to be compiled with -fno-trapping-math: core/CMakeLists.txt). The compiler then runs
// the same code in its vector body and its scalar remainder, so an element's result does not
// depend on where a thread's chunk starts (results stay independent of the thread count).
//   exp_approx(x), f32: Cephes' expf. x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2 (ln2
//     in two parts, so r is exact), e^r by a degree-7 polynomial, times 2^n put into the exponent
//     bits. Relative error under 2e-7 (about 2 ulp) over the finite range, checked against libm
//     in tests/ops/test_swiglu.cpp; x < -87.33 (where e^x is not a normal float) gives 0,
//     x > 88.7228 (past FLT_MAX) gives +inf, NaN gives NaN.
//   f64: std::exp (the gradient checks keep libm's double).
//   sigmoid_approx(a) = 1 / (1 + e^-a) from e = e^-|a| <= 1, so nothing overflows: 1 / (1 + e) for
//     a >= 0, e / (1 + e) below; a < -87.33 gives 0.
//   lane_sum(n, term) = sum of term(i) for i < n in kSumLanes interleaved partial sums (lane l takes
//     i = l mod kSumLanes), added up pairwise at the end: each lane is its own chain, so the loop
//     vectorises without -ffast-math (a single running sum is one serial chain of adds, 4 cycles
//     each), and the order is fixed by n alone, not by alignment or threads.
#pragma once

#include <cmath>
#include <cstdint>

namespace moelab::ref {

inline float exp_approx(float x) {
  constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer (ties to even)
  // NaN fails the comparison and becomes -87.33 too, so the integer conversion below only ever sees
  // finite values (the result for NaN is chosen at the end). std::fmin/fmax's NaN rules would keep
  // the loop scalar.
  const float x_lo = x >= -87.33f ? x : -87.33f;
  const float xc = x_lo > 88.7228f ? 88.7228f : x_lo;
  const float n = (xc * kLog2e + kRound) - kRound;
  const float r = (xc - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * (r * r) + r + 1.0f;
  // 2^n with n in [-126, 128]: 2^128 is no float, so n = 128 multiplies by 2^127, then by 2.
  const float n_hi = n > 127.0f ? 127.0f : n;
  const float scale = __builtin_bit_cast(float, static_cast<uint32_t>(static_cast<int32_t>(n_hi) + 127) << 23);
  const float y = er * scale * (1.0f + (n - n_hi));
  const float lo = x < -87.33f ? 0.0f : y;
  const float out = x > 88.7228f ? INFINITY : lo;  // e^88.7228 is FLT_MAX
  return x != x ? x : out;  // NaN stays NaN
}

inline double exp_approx(double x) { return std::exp(x); }

template <typename T>
inline T sigmoid_approx(T a) {
  const T e = exp_approx(-std::fabs(a));
  const T s = T(1) / (T(1) + e);
  return a >= T(0) ? s : e * s;
}

constexpr int kSumLanes = 16;  // two AVX2 / one AVX-512 register of floats, and room for latency

template <typename T, typename Term>
inline T lane_sum(int64_t n, Term term) {
  T acc[kSumLanes] = {};
  int64_t i = 0;
  for (; i + kSumLanes <= n; i += kSumLanes)
    for (int l = 0; l < kSumLanes; ++l) acc[l] += term(i + l);
  for (int l = 0; i + l < n; ++l) acc[l] += term(i + l);
  for (int width = kSumLanes / 2; width > 0; width /= 2)
    for (int l = 0; l < width; ++l) acc[l] += acc[l + width];
  return acc[0];
}

}  // namespace moelab::ref
