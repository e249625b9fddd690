// Gradient norm and clipping: hand-computed norms (3-4-5) over mixed dtypes and shapes, large
// tensors against a sequential sum, thread-count determinism, clip scaling, no clip below the
// threshold, the non-finite rule, and argument errors.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/ops/grad_norm.h"
#include "tests/harness.h"

namespace moelab {
namespace {

Tensor tensor_of(const Shape& shape, DType dtype, const std::vector<double>& values) {
  Tensor t = Tensor::empty(shape, DType::F64);
  std::copy(values.begin(), values.end(), t.data<double>());
  return t.to(dtype);
}

TEST(GradNorm, HandComputed345) {
  EXPECT_EQ(grad_norm(Exec{}, {tensor_of({1}, DType::F32, {3}), tensor_of({1}, DType::F64, {4})}), 5.0);
  // 1 + 4 + 4 + 16 = 25 over an f32 [3] and an f64 [1, 1].
  EXPECT_EQ(grad_norm(Exec{}, {tensor_of({3}, DType::F32, {1, -2, 2}), tensor_of({1, 1}, DType::F64, {-4})}), 5.0);
  EXPECT_EQ(grad_norm(Exec{}, {}), 0.0);
}

TEST(GradNorm, LargeTensorsMatchSequentialSum) {
  // Sizes that cross the 4096-element chunks unevenly.
  std::vector<Tensor> grads{testing::randn({10007}, DType::F32, 1), testing::randn({3, 4099}, DType::F64, 2),
                            testing::randn({5}, DType::F32, 3)};
  double sum = 0;
  for (const Tensor& g : grads) {
    const Tensor d = g.to(DType::F64);
    for (int64_t i = 0; i < d.numel(); ++i) sum += d.data<double>()[i] * d.data<double>()[i];
  }
  EXPECT_NEAR(grad_norm(Exec{}, grads), std::sqrt(sum), 1e-12 * std::sqrt(sum));
}

TEST(GradNorm, SameBitsForAnyThreadCount) {
  std::vector<Tensor> grads{testing::randn({50001}, DType::F32, 4), testing::randn({9000}, DType::F32, 5)};
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double one = grad_norm(Exec{}, grads);
  omp_set_num_threads(3);
  const double three = grad_norm(Exec{}, grads);
  omp_set_num_threads(saved);
  EXPECT_EQ(one, three);
}

TEST(GradNorm, ClipScalesToMaxNorm) {
  Tensor a = tensor_of({1}, DType::F64, {3}), b = tensor_of({2}, DType::F32, {0, 4});
  EXPECT_EQ(clip_grad_norm(Exec{}, {a, b}, 1.0), 5.0);  // the norm before clipping
  const double c = 1.0 / (5.0 + 1e-6);           // PyTorch's coefficient
  EXPECT_DOUBLE_EQ(a.data<double>()[0], 3 * c);
  EXPECT_FLOAT_EQ(b.data<float>()[1], static_cast<float>(4 * c));
  EXPECT_NEAR(grad_norm(Exec{}, {a, b}), 1.0, 1e-6);
}

TEST(GradNorm, NoClipBelowMaxNorm) {
  Tensor a = testing::randn({33}, DType::F32, 6);
  const Tensor before = a.to(DType::F64);
  const double norm = grad_norm(Exec{}, {a});
  EXPECT_EQ(clip_grad_norm(Exec{}, {a}, 2 * norm), norm);
  EXPECT_TRUE(testing::close(a, before, 0, 0));  // untouched, bit for bit
}

TEST(GradNorm, NonFiniteNormLeavesGradsUntouched) {
  const double inf = std::numeric_limits<double>::infinity(), nan = std::numeric_limits<double>::quiet_NaN();
  Tensor a = tensor_of({2}, DType::F32, {3, inf}), b = tensor_of({1}, DType::F64, {4});
  EXPECT_EQ(clip_grad_norm(Exec{}, {a, b}, 1.0), inf);
  EXPECT_EQ(a.data<float>()[0], 3.0f);
  EXPECT_EQ(b.data<double>()[0], 4.0);
  Tensor c = tensor_of({2}, DType::F64, {nan, 30});
  EXPECT_TRUE(std::isnan(clip_grad_norm(Exec{}, {c}, 1.0)));
  EXPECT_EQ(c.data<double>()[1], 30.0);
}

using testing::expect_error;

TEST(GradNorm, ArgumentErrorsNameTheValue) {
  Tensor a = Tensor::zeros({3}, DType::F32);
  expect_error([&] { clip_grad_norm(Exec{}, {a}, 0.0); }, "max_norm is 0, expected > 0");
  expect_error([&] { clip_grad_norm(Exec{}, {a}, -1.0); }, "max_norm is -1");
  expect_error([&] { grad_norm(Exec{}, {a, Tensor()}); }, "grads[1] is undefined");
  expect_error([&] { grad_norm(Exec{}, {Tensor::zeros({3}, DType::I32)}); },
               "takes f32 or f64 tensors, got i32[3]@cpu");
}

}  // namespace
}  // namespace moelab
