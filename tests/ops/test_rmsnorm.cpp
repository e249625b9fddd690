// RMSNorm: finite-difference gradient checks in double, the accumulate/overwrite contract, f32 vs
// f64 agreement, and argument errors.
#include <gtest/gtest.h>

#include "core/ops/rmsnorm.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::check_grad;
using testing::randn;

struct Case { Shape x; const char* what; };

class RmsnormGrad : public ::testing::TestWithParam<Case> {};

TEST_P(RmsnormGrad, MatchesFiniteDifferences) {
  const Shape xs = GetParam().x;
  const int64_t dim = xs[-1], rows = xs.numel() / dim;
  const double eps = 1e-6;
  Tensor x = randn(xs, DType::F64, 1), w = randn({dim}, DType::F64, 2, 0.5, 1.0);
  Tensor gy = randn(xs, DType::F64, 3);
  Tensor y = Tensor::empty(xs, DType::F64), rstd = Tensor::empty({rows}, DType::F64);
  auto loss = [&] {
    rmsnorm_forward(Exec{}, x, w, static_cast<float>(eps), y, rstd);
    return testing::dot(y, gy);
  };
  loss();
  Tensor gx = randn(xs, DType::F64, 4);              // garbage: backward must overwrite it
  Tensor gw0 = randn({dim}, DType::F64, 5), gw = gw0.to(Device::CPU);  // backward must add to it
  rmsnorm_backward(Exec{}, gy, x, w, rstd, gx, gw);
  Tensor gw_added = Tensor::empty({dim}, DType::F64);
  for (int64_t i = 0; i < dim; ++i) gw_added.data<double>()[i] = gw.data<double>()[i] - gw0.data<double>()[i];
  EXPECT_TRUE(check_grad(x, gx, loss)) << GetParam().what;
  EXPECT_TRUE(check_grad(w, gw_added, loss)) << GetParam().what;
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsnormGrad,
                         ::testing::Values(Case{{3, 7}, "odd rows and dim"}, Case{{1, 1, 5}, "one row (T = 1)"},
                                           Case{{2, 3, 13}, "3-D input"}, Case{{2, 1, 1, 70}, "4-D, dim > 64 column block"}),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

TEST(Rmsnorm, FloatMatchesDouble) {
  Tensor x = randn({5, 33}, DType::F64, 11), w = randn({33}, DType::F64, 12);
  Tensor y64 = Tensor::empty({5, 33}, DType::F64), r64 = Tensor::empty({5}, DType::F64);
  rmsnorm_forward(Exec{}, x, w, 1e-6f, y64, r64);
  Tensor y32 = Tensor::empty({5, 33}, DType::F32), r32 = Tensor::empty({5}, DType::F32);
  rmsnorm_forward(Exec{}, x.to(DType::F32), w.to(DType::F32), 1e-6f, y32, r32);
  EXPECT_TRUE(testing::close(y32, y64, 1e-6, 1e-5));
  // A row of a known value: x = 2 everywhere -> rstd = 1/2, y = w.
  Tensor c = Tensor::empty({1, 4}, DType::F64), cw = Tensor::empty({4}, DType::F64);
  c.fill(2.0);
  cw.fill(3.0);
  Tensor cy = Tensor::empty({1, 4}, DType::F64), cr = Tensor::empty({1}, DType::F64);
  rmsnorm_forward(Exec{}, c, cw, 0.0f, cy, cr);
  EXPECT_DOUBLE_EQ(cr.data<double>()[0], 0.5);
  EXPECT_DOUBLE_EQ(cy.data<double>()[2], 3.0);
}

TEST(Rmsnorm, ArgumentErrorsNameTheTensor) {
  Tensor x = Tensor::zeros({2, 8}, DType::F32), w = Tensor::zeros({7}, DType::F32);
  Tensor y = Tensor::zeros({2, 8}, DType::F32), r = Tensor::zeros({2}, DType::F32);
  try {
    rmsnorm_forward(Exec{}, x, w, 1e-6f, y, r);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("weight is f32[7]@cpu, expected shape [8]"), std::string::npos) << e.what();
  }
  Tensor w8 = Tensor::zeros({8}, DType::F64);
  EXPECT_THROW(rmsnorm_forward(Exec{}, x, w8, 1e-6f, y, r), Error);  // mixed f32/f64
  Tensor xi = Tensor::zeros({2, 8}, DType::I32), yi = Tensor::zeros({2, 8}, DType::I32);
  EXPECT_THROW(rmsnorm_forward(Exec{}, xi, w8, 1e-6f, yi, r), Error);
}

}  // namespace
}  // namespace moelab
