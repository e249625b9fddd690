// RoPE: finite-difference gradient checks in double (sub-ranges, offsets, one token, one head), a
// hand-computed rotation, norm preservation, position 0 = identity, decoding with pos_offset, float
// accuracy at large positions, in-place use, and argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>

#include "core/ops/rope.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::check_grad;
using testing::randn;

constexpr double kTheta = 10000.0;

// L = <rope(x), G>; its gradient is rope_backward(G), written over garbage.
void expect_rope_grad(const Shape& xs, int64_t rope_offset, int64_t rope_dim, int64_t pos_offset,
                      double theta = kTheta) {
  Tensor x = randn(xs, DType::F64, 1), G = randn(xs, DType::F64, 2), y = Tensor::empty(xs, DType::F64);
  auto loss = [&] {
    rope_forward(Exec{}, x, y, rope_offset, rope_dim, theta, pos_offset);
    return testing::dot(y, G);
  };
  Tensor gx = randn(xs, DType::F64, 3);  // garbage: backward must overwrite it
  rope_backward(Exec{}, G, gx, rope_offset, rope_dim, theta, pos_offset);
  EXPECT_TRUE(check_grad(x, gx, loss));
}

TEST(Rope, GradCheckOneTokenOneHead) { expect_rope_grad({1, 1, 1, 2}, 0, 2, /*pos_offset=*/3); }
TEST(Rope, GradCheckSubRangeWithOffset) { expect_rope_grad({2, 5, 3, 7}, 1, 4, 0); }  // dims 0, 5, 6 pass through
TEST(Rope, GradCheckMlaQueryTail) { expect_rope_grad({1, 3, 2, 9}, 5, 4, 0); }      // [B,T,H,Dn+Dr], offset Dn
TEST(Rope, GradCheckSharedRopeKey) { expect_rope_grad({2, 4, 1, 4}, 0, 4, 0); }     // [B,T,1,Dr]
TEST(Rope, GradCheckWholeHeadWithPosOffset) { expect_rope_grad({1, 3, 2, 6}, 0, 6, 11, /*theta=*/500.0); }

TEST(Rope, HandComputedRotation) {
  // T = 2, one head, Dh = R = 4. At position 1 pair 0 turns by 1 rad, pair 1 by 10000^(-2/4) = 0.01.
  Tensor x = Tensor::empty({1, 2, 1, 4}, DType::F64), y = Tensor::empty({1, 2, 1, 4}, DType::F64);
  for (int i = 0; i < 8; ++i) x.data<double>()[i] = i % 4 + 1;  // each token is (1, 2, 3, 4)
  rope_forward(Exec{}, x, y, 0, 4, kTheta);
  const double* py = y.data<double>();
  for (int d = 0; d < 4; ++d) EXPECT_EQ(py[d], d + 1) << "position 0 must not turn, dim " << d;
  const double a0 = 1.0, a1 = 0.01;
  EXPECT_NEAR(py[4], 1 * std::cos(a0) - 2 * std::sin(a0), 1e-15);
  EXPECT_NEAR(py[5], 1 * std::sin(a0) + 2 * std::cos(a0), 1e-15);
  EXPECT_NEAR(py[6], 3 * std::cos(a1) - 4 * std::sin(a1), 1e-15);
  EXPECT_NEAR(py[7], 3 * std::sin(a1) + 4 * std::cos(a1), 1e-15);
}

TEST(Rope, PreservesPairNormsAndLeavesOtherDims) {
  const int64_t Dh = 8, offset = 2, R = 4;
  Tensor x = randn({2, 5, 3, Dh}, DType::F64, 21), y = Tensor::empty({2, 5, 3, Dh}, DType::F64);
  rope_forward(Exec{}, x, y, offset, R, kTheta, /*pos_offset=*/7);
  const double* px = x.data<double>();
  const double* py = y.data<double>();
  for (int64_t row = 0; row < x.numel() / Dh; ++row) {
    const double* xr = px + row * Dh;
    const double* yr = py + row * Dh;
    for (int64_t d = 0; d < Dh; ++d) {
      if (d < offset || d >= offset + R) {
        EXPECT_EQ(yr[d], xr[d]) << "row " << row << " dim " << d;
      }
    }
    for (int64_t d = offset; d < offset + R; d += 2)
      EXPECT_NEAR(std::hypot(yr[d], yr[d + 1]), std::hypot(xr[d], xr[d + 1]), 1e-14) << "row " << row << " pair at " << d;
  }
}

TEST(Rope, PositionZeroIsIdentity) {
  Tensor x = randn({2, 1, 3, 6}, DType::F64, 31), y = Tensor::empty({2, 1, 3, 6}, DType::F64);
  rope_forward(Exec{}, x, y, 0, 6, kTheta);
  EXPECT_TRUE(testing::close(y, x, 0, 0));  // cos 0 = 1, sin 0 = 0: exact
}

TEST(Rope, PosOffsetEqualsTailOfLongerSequence) {
  // Decoding: rotating tokens 5..8 alone with pos_offset 5 must give what they got in the full sequence.
  const int64_t B = 2, T = 9, H = 2, Dh = 6, t0 = 5, tail = T - t0;
  Tensor full = randn({B, T, H, Dh}, DType::F64, 41), full_y = Tensor::empty({B, T, H, Dh}, DType::F64);
  rope_forward(Exec{}, full, full_y, 2, 4, kTheta);
  Tensor part = Tensor::empty({B, tail, H, Dh}, DType::F64), expected = Tensor::empty({B, tail, H, Dh}, DType::F64);
  const int64_t row = H * Dh;  // elements per token
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < tail * row; ++i) {
      part.data<double>()[b * tail * row + i] = full.data<double>()[(b * T + t0) * row + i];
      expected.data<double>()[b * tail * row + i] = full_y.data<double>()[(b * T + t0) * row + i];
    }
  Tensor part_y = Tensor::empty({B, tail, H, Dh}, DType::F64);
  rope_forward(Exec{}, part, part_y, 2, 4, kTheta, t0);
  EXPECT_TRUE(testing::close(part_y, expected, 0, 0));
}

TEST(Rope, FloatStaysAccurateAtLargePositions) {
  // Angles in float would be off by ~1e-7 * 1e6 = 0.1 rad here; in double the error stays ~1e-7.
  const Shape xs{1, 3, 2, 8};
  Tensor x32 = randn(xs, DType::F32, 51), y32 = Tensor::empty(xs, DType::F32);
  Tensor x64 = x32.to(DType::F64), y64 = Tensor::empty(xs, DType::F64);
  rope_forward(Exec{}, x32, y32, 0, 8, kTheta, /*pos_offset=*/1000000);
  rope_forward(Exec{}, x64, y64, 0, 8, kTheta, 1000000);
  EXPECT_TRUE(testing::close(y32, y64, 1e-6, 1e-5));
}

TEST(Rope, InPlaceMatchesOutOfPlace) {
  const Shape xs{2, 4, 3, 10};
  Tensor x = randn(xs, DType::F32, 61), y = Tensor::empty(xs, DType::F32), g = randn(xs, DType::F32, 62);
  rope_forward(Exec{}, x, y, 4, 6, kTheta, 2);
  Tensor gx = Tensor::empty(xs, DType::F32);
  rope_backward(Exec{}, g, gx, 4, 6, kTheta, 2);
  rope_forward(Exec{}, x, x, 4, 6, kTheta, 2);
  rope_backward(Exec{}, g, g, 4, 6, kTheta, 2);
  EXPECT_TRUE(testing::close(x, y, 0, 0));
  EXPECT_TRUE(testing::close(g, gx, 0, 0));
}

using testing::expect_error;

TEST(Rope, ArgumentErrorsNameTheValue) {
  Tensor x = Tensor::zeros({1, 2, 2, 8}, DType::F32), y = Tensor::zeros({1, 2, 2, 8}, DType::F32);
  expect_error([&] { rope_forward(Exec{}, x, y, 0, 3, kTheta); }, "rope_dim is 3, expected an even number >= 2");
  expect_error([&] { rope_forward(Exec{}, x, y, 6, 4, kTheta); },
               "rope_offset 6 + rope_dim 4 must lie within the head dim 8");
  expect_error([&] { rope_forward(Exec{}, x, y, 0, 4, 0.0); }, "theta is 0");
  expect_error([&] { rope_forward(Exec{}, x, y, 0, 4, kTheta, -1); }, "pos_offset is -1");
  expect_error(
      [&] {
        rope_forward(Exec{}, x.reshape({2, 2, 8}), y.reshape({2, 2, 8}), 0, 4, kTheta);
      },
      "expected 4..4 dims");
  expect_error(
      [&] {
        rope_forward(Exec{}, x, Tensor::zeros({1, 2, 2, 8}, DType::F64), 0, 4, kTheta);
      },
      "expected dtype f32");
  // Partly overlapping views of one buffer (in place must be the same tensor).
  Tensor buf = Tensor::zeros({3, 2, 2, 8}, DType::F32);
  expect_error([&] { rope_forward(Exec{}, buf.slice(0, 2), buf.slice(1, 3), 0, 4, kTheta); }, "partly overlaps x");
}

}  // namespace
}  // namespace moelab
