// Top-k: finite-difference gradient checks in double on inputs away from ties, agreement with a
// full stable sort, the tie rule (lower index first), NaN ordering, and argument errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "core/ops/topk.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::check_grad;

// Smallest distance between two entries of one row: the FD step must not reorder any of them,
// or the sorted values (and the selection) would jump.
double min_gap(const Tensor& x, int64_t n) {
  const int64_t E = x.size(1);
  std::vector<double> row(x.data<double>() + n * E, x.data<double>() + (n + 1) * E);
  std::sort(row.begin(), row.end());
  double gap = std::numeric_limits<double>::infinity();
  for (int64_t e = 1; e < E; ++e) gap = std::min(gap, row[e] - row[e - 1]);
  return gap;
}

// L = <values, G>; its gradient is topk_backward(G, indices), written over garbage.
void expect_topk_grad(int64_t N, int64_t E, int64_t K, uint64_t seed) {
  Tensor x = testing::rand_uniform({N, E}, DType::F64, seed, -2.0f, 2.0f);
  // Away from ties: every gap (so also the one between the K-th and (K+1)-th value) > 10 steps.
  for (int64_t n = 0; n < N; ++n) ASSERT_GT(min_gap(x, n), 10 * testing::kGradStep) << "row " << n << ", seed " << seed;
  Tensor G = testing::randn({N, K}, DType::F64, seed + 1);
  Tensor values = Tensor::empty({N, K}, DType::F64), indices = Tensor::empty({N, K}, DType::I32);
  auto loss = [&] {
    topk_forward(Exec{}, x, K, values, indices);
    return testing::dot(values, G);
  };
  loss();
  Tensor gx = testing::randn({N, E}, DType::F64, seed + 2);  // garbage: backward must overwrite all of it
  topk_backward(Exec{}, G, indices, gx);
  EXPECT_TRUE(check_grad(x, gx, loss));
}

TEST(Topk, GradCheckOneEntry) { expect_topk_grad(1, 1, 1, 1); }
TEST(Topk, GradCheckOddShape) { expect_topk_grad(3, 7, 2, 11); }
TEST(Topk, GradCheckRouterLike) { expect_topk_grad(5, 13, 4, 21); }
TEST(Topk, GradCheckKEqualsE) { expect_topk_grad(2, 6, 6, 31); }

TEST(Topk, MatchesStableSort) {
  const int64_t N = 17, E = 33, K = 8;
  Tensor x = testing::randn({N, E}, DType::F32, 41);
  Tensor values = Tensor::empty({N, K}, DType::F32), indices = Tensor::empty({N, K}, DType::I32);
  topk_forward(Exec{}, x, K, values, indices);
  for (int64_t n = 0; n < N; ++n) {
    const float* xr = x.data<float>() + n * E;
    std::vector<int32_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return xr[a] > xr[b]; });
    for (int64_t j = 0; j < K; ++j) {
      EXPECT_EQ(indices.data<int32_t>()[n * K + j], order[j]) << "row " << n << " rank " << j;
      EXPECT_EQ(values.data<float>()[n * K + j], xr[order[j]]) << "row " << n << " rank " << j;
    }
  }
}

// Runs topk on one row and returns the indices.
std::vector<int32_t> topk_row(const std::vector<double>& row, int64_t k) {
  const int64_t E = static_cast<int64_t>(row.size());
  Tensor x = Tensor::empty({1, E}, DType::F64), values = Tensor::empty({1, k}, DType::F64);
  Tensor indices = Tensor::empty({1, k}, DType::I32);
  std::copy(row.begin(), row.end(), x.data<double>());
  topk_forward(Exec{}, x, k, values, indices);
  return {indices.data<int32_t>(), indices.data<int32_t>() + k};
}

TEST(Topk, TiesGoToTheLowerIndex) {
  using V = std::vector<int32_t>;
  EXPECT_EQ(topk_row({1, 3, 3, 2, 3}, 3), (V{1, 2, 4}));
  EXPECT_EQ(topk_row({1, 3, 3, 2, 3}, 4), (V{1, 2, 4, 3}));
  EXPECT_EQ(topk_row({5, 5, 5, 5}, 2), (V{0, 1}));
  EXPECT_EQ(topk_row({-0.0, 0.0, -1}, 1), (V{0}));  // -0 == +0
}

TEST(Topk, NanRanksFirst) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(topk_row({1, nan, 2, nan}, 3), (std::vector<int32_t>{1, 3, 2}));
}

using testing::expect_error;

TEST(Topk, ArgumentErrorsNameKAndE) {
  Tensor x = Tensor::zeros({4, 8}, DType::F32);
  Tensor v9 = Tensor::zeros({4, 9}, DType::F32), i9 = Tensor::zeros({4, 9}, DType::I32);
  expect_error([&] { topk_forward(Exec{}, x, 9, v9, i9); }, "k is 9 but x f32[4,8]@cpu has E = 8 entries per row");
  Tensor v0 = Tensor::zeros({4, 0}, DType::F32), i0 = Tensor::zeros({4, 0}, DType::I32);
  expect_error([&] { topk_forward(Exec{}, x, 0, v0, i0); }, "k is 0 but x f32[4,8]@cpu has E = 8");
  Tensor v2 = Tensor::zeros({4, 2}, DType::F32), i2 = Tensor::zeros({4, 2}, DType::I32);
  expect_error([&] { topk_forward(Exec{}, x, 2, v2, v2); }, "indices is f32[4,2]@cpu, expected dtype i32");
  expect_error([&] { topk_forward(Exec{}, x, 3, v2, i2); }, "values is f32[4,2]@cpu, expected shape [4,3]");
  i2.data<int32_t>()[2] = 8;  // row 1, rank 0
  expect_error([&] { topk_backward(Exec{}, v2, i2, x); }, "indices[1, 0] is 8, expected an index in [0, E = 8)");
}

}  // namespace
}  // namespace moelab
