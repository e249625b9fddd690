// Sigmoid and softmax: finite-difference gradient checks in double, the overwrite contract, known
// values (large inputs included), f32 vs f64 agreement, and argument errors.
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "core/ops/activation.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::check_grad;
using testing::randn;

// x ~ N(0, 3^2) reaches the flat tails of sigmoid and makes softmax rows far from uniform.
// grad_x is overwritten, so it starts as garbage. L = <y, G>.
template <typename Forward, typename Backward>
void check_activation_grads(const Shape& shape, Forward forward, Backward backward) {
  Tensor x = randn(shape, DType::F64, 1, 3.0), g = randn(shape, DType::F64, 2), y = Tensor::empty(shape, DType::F64);
  auto loss = [&] {
    forward(x, y);
    return testing::dot(y, g);
  };
  loss();
  Tensor gx = randn(shape, DType::F64, 3);
  backward(g, y, gx);
  EXPECT_TRUE(check_grad(x, gx, loss)) << "x " << shape.str();
}

void check_sigmoid_grads(const Shape& shape) {
  check_activation_grads(
      shape, [](const Tensor& x, const Tensor& y) { sigmoid_forward(Exec{}, x, y); },
      [](const Tensor& gy, const Tensor& y, const Tensor& gx) { sigmoid_backward(Exec{}, gy, y, gx); });
}
void check_softmax_grads(const Shape& shape) {
  check_activation_grads(
      shape, [](const Tensor& x, const Tensor& y) { softmax_forward(Exec{}, x, y); },
      [](const Tensor& gy, const Tensor& y, const Tensor& gx) { softmax_backward(Exec{}, gy, y, gx); });
}

TEST(Sigmoid, GradCheckOneRow) { check_sigmoid_grads({1, 5}); }
TEST(Sigmoid, GradCheckOddShapes) { check_sigmoid_grads({3, 7}); }
TEST(Sigmoid, GradCheck3D) { check_sigmoid_grads({2, 3, 13}); }
TEST(Softmax, GradCheckOneRow) { check_softmax_grads({1, 5}); }
TEST(Softmax, GradCheckOddShapes) { check_softmax_grads({3, 7}); }
TEST(Softmax, GradCheck3D) { check_softmax_grads({2, 3, 13}); }
TEST(Softmax, GradCheckSingleColumn) { check_softmax_grads({4, 1}); }  // y = 1, gradient 0

TEST(Sigmoid, KnownValuesAndLargeInputs) {
  Tensor x = Tensor::empty({6}, DType::F32), y = Tensor::empty({6}, DType::F32);
  const float xs[6] = {0.0f, 2.0f, -2.0f, 100.0f, -100.0f, -1000.0f};
  for (int i = 0; i < 6; ++i) x.data<float>()[i] = xs[i];
  sigmoid_forward(Exec{}, x, y);
  const float* p = y.data<float>();
  EXPECT_EQ(p[0], 0.5f);
  EXPECT_NEAR(p[1], 1.0 / (1.0 + std::exp(-2.0)), 1e-7);
  EXPECT_NEAR(p[1] + p[2], 1.0f, 1e-7) << "sigmoid(-a) = 1 - sigmoid(a)";
  EXPECT_EQ(p[3], 1.0f);
  // e^-100 is a subnormal float (spacing ~4% there); the textbook 1 / (1 + e^100) would give 0,
  // because e^100 overflows float.
  EXPECT_NEAR(p[4] / std::exp(-100.0), 1.0, 0.05);
  EXPECT_EQ(p[5], 0.0f);
  // Backward from the saved y: y (1 - y) is 1/4 at 0 and 0 in the tails, never NaN.
  Tensor gy = Tensor::empty({6}, DType::F32), gx = Tensor::empty({6}, DType::F32);
  gy.fill(2.0);
  sigmoid_backward(Exec{}, gy, y, gx);
  EXPECT_EQ(gx.data<float>()[0], 0.5f);
  EXPECT_EQ(gx.data<float>()[3], 0.0f);
  EXPECT_EQ(gx.data<float>()[5], 0.0f);
}

TEST(Softmax, KnownValuesAndLargeInputs) {
  // Rows: uniform -> 1/C; [0, ln 3, 0, 0] -> [1/6, 1/2, 1/6, 1/6]; huge equal logits -> 1/C (the
  // max subtraction keeps e^1000 from overflowing); one huge logit -> one-hot.
  Tensor x = Tensor::empty({4, 4}, DType::F32), y = Tensor::empty({4, 4}, DType::F32);
  const float xs[16] = {0.7f, 0.7f, 0.7f, 0.7f,  0, std::log(3.0f), 0, 0,  1000, 1000, 1000, 1000,  -5, 1000, 3, 0};
  for (int i = 0; i < 16; ++i) x.data<float>()[i] = xs[i];
  softmax_forward(Exec{}, x, y);
  const float* p = y.data<float>();
  const float expected[16] = {0.25f, 0.25f, 0.25f, 0.25f,  1 / 6.f, 0.5f, 1 / 6.f, 1 / 6.f,
                              0.25f, 0.25f, 0.25f, 0.25f,  0, 1, 0, 0};
  for (int i = 0; i < 16; ++i) EXPECT_NEAR(p[i], expected[i], 1e-6) << "element " << i;
}

TEST(Activation, FloatMatchesDouble) {
  Tensor x = randn({5, 37}, DType::F64, 11, 3.0), g = randn({5, 37}, DType::F64, 12);
  for (const bool softmax : {false, true}) {
    Tensor y64 = Tensor::empty({5, 37}, DType::F64), gx64 = Tensor::empty({5, 37}, DType::F64);
    Tensor y32 = Tensor::empty({5, 37}, DType::F32), gx32 = Tensor::empty({5, 37}, DType::F32);
    if (softmax) {
      softmax_forward(Exec{}, x, y64);
      softmax_forward(Exec{}, x.to(DType::F32), y32);
      softmax_backward(Exec{}, g, y64, gx64);
      softmax_backward(Exec{}, g.to(DType::F32), y32, gx32);
    } else {
      sigmoid_forward(Exec{}, x, y64);
      sigmoid_forward(Exec{}, x.to(DType::F32), y32);
      sigmoid_backward(Exec{}, g, y64, gx64);
      sigmoid_backward(Exec{}, g.to(DType::F32), y32, gx32);
    }
    EXPECT_TRUE(testing::close(y32, y64, 1e-6, 1e-5)) << (softmax ? "softmax" : "sigmoid");
    EXPECT_TRUE(testing::close(gx32, gx64, 1e-6, 1e-5)) << (softmax ? "softmax" : "sigmoid");
  }
}

TEST(Activation, ArgumentErrorsNameTheTensor) {
  Tensor x = Tensor::zeros({2, 8}, DType::F32), y_bad = Tensor::zeros({2, 7}, DType::F32);
  try {
    softmax_forward(Exec{}, x, y_bad);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("softmax_forward: y is f32[2,7]@cpu, expected shape [2,8]"), std::string::npos)
        << e.what();
  }
  Tensor y = Tensor::zeros({2, 8}, DType::F32);
  try {
    sigmoid_backward(Exec{}, Tensor::zeros({2, 8}, DType::F64), y, Tensor::zeros({2, 8}, DType::F32));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("grad_y is f64[2,8]@cpu, expected dtype f32"), std::string::npos) << e.what();
  }
  EXPECT_THROW(softmax_forward(Exec{}, Tensor::zeros({2, 0}, DType::F32), Tensor::zeros({2, 0}, DType::F32)), Error);
  EXPECT_THROW(sigmoid_forward(Exec{}, Tensor::zeros({3}, DType::I32), Tensor::zeros({3}, DType::I32)), Error);
}

}  // namespace
}  // namespace moelab
