// Matmul: finite-difference gradient checks in double, the accumulate/overwrite contract, the
// optional grad_x, f32 vs f64 agreement, a hand-computed product, and argument errors.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/ops/matmul.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::check_grad;
using testing::randn;

// s with its last dim replaced by n (the shape of y for x of shape s).
Shape with_last_dim(const Shape& s, int64_t n) {
  std::vector<int64_t> d = s.dims();
  d.back() = n;
  return Shape(d);
}

// Checks grad_x (overwritten: pre-filled with garbage) and grad_w (accumulated: pre-filled with
// random values, the ADDED part is checked) against central differences of L = <Y, G>.
void check_matmul_grads(const Shape& xs, int64_t n) {
  const Shape ys = with_last_dim(xs, n);
  const int64_t k = xs[-1];
  Tensor x = randn(xs, DType::F64, 1), w = randn({n, k}, DType::F64, 2);
  Tensor gy = randn(ys, DType::F64, 3), y = Tensor::empty(ys, DType::F64);
  auto loss = [&] {
    matmul_forward(Exec{}, x, w, y);
    return testing::dot(y, gy);
  };
  Tensor gx = randn(xs, DType::F64, 4);
  Tensor gw0 = randn({n, k}, DType::F64, 5), gw = gw0.to(Device::CPU);
  matmul_backward(Exec{}, gy, x, w, gx, gw);
  Tensor gw_added = Tensor::empty({n, k}, DType::F64);
  for (int64_t i = 0; i < n * k; ++i) gw_added.data<double>()[i] = gw.data<double>()[i] - gw0.data<double>()[i];
  EXPECT_TRUE(check_grad(x, gx, loss)) << "grad_x, x " << xs.str() << ", N " << n;
  EXPECT_TRUE(check_grad(w, gw_added, loss)) << "grad_w, x " << xs.str() << ", N " << n;
}

TEST(Matmul, GradCheckOneRow) { check_matmul_grads({1, 5}, 3); }          // M = 1 (T = 1)
TEST(Matmul, GradCheckOddShapes) { check_matmul_grads({3, 7}, 5); }       // odd M, K, N
TEST(Matmul, GradCheck3D) { check_matmul_grads({2, 3, 9}, 11); }           // x [B, T, K]
TEST(Matmul, GradCheck4DOneOutput) { check_matmul_grads({2, 1, 3, 13}, 1); }  // 4-D x, N = 1
TEST(Matmul, GradCheckScalarProduct) { check_matmul_grads({1, 1}, 1); }    // 1 x 1 x 1

TEST(Matmul, UndefinedGradXSkipsOnlyThatGemm) {
  // An undefined grad_x skips the input gradient; grad_w must come out the same as with it.
  Tensor x = randn({4, 6}, DType::F64, 21), w = randn({3, 6}, DType::F64, 22), gy = randn({4, 3}, DType::F64, 23);
  Tensor gw_skip = randn({3, 6}, DType::F64, 24), gw_full = gw_skip.to(Device::CPU);
  Tensor gx = Tensor::empty({4, 6}, DType::F64);
  matmul_backward(Exec{}, gy, x, w, Tensor(), gw_skip);
  matmul_backward(Exec{}, gy, x, w, gx, gw_full);
  EXPECT_TRUE(testing::close(gw_skip, gw_full, 0, 0));
}

TEST(Matmul, HandComputed2x2) {
  // [1 2; 3 4] [5 6; 7 8]^T = [1*5+2*6  1*7+2*8; 3*5+4*6  3*7+4*8] = [17 23; 39 53]
  Tensor x = Tensor::empty({2, 2}, DType::F32), w = Tensor::empty({2, 2}, DType::F32), y = Tensor::empty({2, 2}, DType::F32);
  for (int i = 0; i < 4; ++i) {
    x.data<float>()[i] = static_cast<float>(i + 1);
    w.data<float>()[i] = static_cast<float>(i + 5);
  }
  matmul_forward(Exec{}, x, w, y);
  const float expected[4] = {17, 23, 39, 53};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(y.data<float>()[i], expected[i]) << "element " << i;
  // Backward with grad_y = ones: grad_x[m, :] = sum_n w[n, :] = [12 14], grad_w[n, :] = sum_m x[m, :] = [4 6].
  Tensor gy = Tensor::empty({2, 2}, DType::F32), gx = Tensor::empty({2, 2}, DType::F32);
  Tensor gw = Tensor::zeros({2, 2}, DType::F32);
  gy.fill(1.0);
  matmul_backward(Exec{}, gy, x, w, gx, gw);
  const float expected_gx[4] = {12, 14, 12, 14}, expected_gw[4] = {4, 6, 4, 6};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(gx.data<float>()[i], expected_gx[i]) << "grad_x element " << i;
    EXPECT_EQ(gw.data<float>()[i], expected_gw[i]) << "grad_w element " << i;
  }
}

TEST(Matmul, FloatMatchesDouble) {
  const Shape xs{3, 37, 129};
  Tensor x = randn(xs, DType::F64, 31), w = randn({65, 129}, DType::F64, 32), gy = randn({3, 37, 65}, DType::F64, 33);
  Tensor y64 = Tensor::empty({3, 37, 65}, DType::F64), y32 = Tensor::empty({3, 37, 65}, DType::F32);
  matmul_forward(Exec{}, x, w, y64);
  matmul_forward(Exec{}, x.to(DType::F32), w.to(DType::F32), y32);
  EXPECT_TRUE(testing::close(y32, y64, 1e-4, 1e-4));
  Tensor gx64 = Tensor::empty(xs, DType::F64), gw64 = Tensor::zeros({65, 129}, DType::F64);
  Tensor gx32 = Tensor::empty(xs, DType::F32), gw32 = Tensor::zeros({65, 129}, DType::F32);
  matmul_backward(Exec{}, gy, x, w, gx64, gw64);
  matmul_backward(Exec{}, gy.to(DType::F32), x.to(DType::F32), w.to(DType::F32), gx32, gw32);
  EXPECT_TRUE(testing::close(gx32, gx64, 1e-4, 1e-4));
  EXPECT_TRUE(testing::close(gw32, gw64, 1e-4, 1e-4));
}

TEST(Matmul, ArgumentErrorsNameTheTensor) {
  Tensor x = Tensor::zeros({2, 8}, DType::F32), w = Tensor::zeros({3, 7}, DType::F32), y = Tensor::zeros({2, 3}, DType::F32);
  try {
    matmul_forward(Exec{}, x, w, y);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("w is f32[3,7]@cpu, expected [N, 8]"), std::string::npos) << e.what();
  }
  Tensor w8 = Tensor::zeros({3, 8}, DType::F32), y_bad = Tensor::zeros({2, 4}, DType::F32);
  try {
    matmul_forward(Exec{}, x, w8, y_bad);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("y is f32[2,4]@cpu, expected shape [2,3]"), std::string::npos) << e.what();
  }
  Tensor gw_bad = Tensor::zeros({3, 9}, DType::F32);
  try {
    matmul_backward(Exec{}, y, x, w8, x, gw_bad);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("grad_w is f32[3,9]@cpu"), std::string::npos) << e.what();
  }
  EXPECT_THROW(matmul_forward(Exec{}, x, w8.to(DType::F64), y), Error);  // mixed f32/f64
  Tensor xi = Tensor::zeros({2, 8}, DType::I32), wi = Tensor::zeros({3, 8}, DType::I32);
  Tensor yi = Tensor::zeros({2, 3}, DType::I32);
  EXPECT_THROW(matmul_forward(Exec{}, xi, wi, yi), Error);
}

}  // namespace
}  // namespace moelab
