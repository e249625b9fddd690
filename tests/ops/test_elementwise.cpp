// add / axpy / concat_columns / split_columns against direct loops; concat and split are each
// other's inverse (and so each other's backward).
#include <gtest/gtest.h>

#include "core/ops/columns.h"
#include "core/ops/elementwise.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::randn;

TEST(Elementwise, AddAndAxpy) {
  Tensor a = randn({3, 5}, DType::F64, 1), b = randn({15}, DType::F64, 2), out = Tensor::empty({3, 5}, DType::F64);
  add(a, b, out);
  for (int i = 0; i < 15; ++i) EXPECT_EQ(out.data<double>()[i], a.data<double>()[i] + b.data<double>()[i]);
  Tensor y = out.to(Device::CPU);
  axpy(-0.5, a, y);
  for (int i = 0; i < 15; ++i) EXPECT_DOUBLE_EQ(y.data<double>()[i], out.data<double>()[i] - 0.5 * a.data<double>()[i]);
  add(a, b, a);  // in place
  EXPECT_TRUE(testing::close(a, out, 0, 0));
  EXPECT_THROW(add(a, Tensor::zeros({14}, DType::F64), out), Error);
  EXPECT_THROW(add(a, b.to(DType::F32), out), Error);
}

TEST(Columns, SplitInvertsConcat) {
  Tensor a = randn({2, 3, 5}, DType::F32, 3), b = randn({2, 3, 2}, DType::F32, 4);
  Tensor whole = Tensor::empty({2, 3, 7}, DType::F32);
  concat_columns(a, b, whole);
  for (int r = 0; r < 6; ++r) {
    for (int c = 0; c < 5; ++c) EXPECT_EQ(whole.data<float>()[r * 7 + c], a.data<float>()[r * 5 + c]);
    for (int c = 0; c < 2; ++c) EXPECT_EQ(whole.data<float>()[r * 7 + 5 + c], b.data<float>()[r * 2 + c]);
  }
  Tensor a2 = Tensor::empty({6, 5}, DType::F32), b2 = Tensor::empty({6, 2}, DType::F32);
  split_columns(whole, a2, b2);
  EXPECT_TRUE(testing::close(a2, a, 0, 0));
  EXPECT_TRUE(testing::close(b2, b, 0, 0));
  try {
    split_columns(whole, Tensor::empty({6, 4}, DType::F32), b2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("do not split f32[2,3,7]@cpu"), std::string::npos) << e.what();
  }
}

TEST(Columns, SliceColumns) {
  Tensor x = testing::randint({3, 9}, 50, 5), out = Tensor::empty({3, 4}, DType::I32);
  slice_columns(x, 2, out);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) EXPECT_EQ(out.data<int32_t>()[r * 4 + c], x.data<int32_t>()[r * 9 + 2 + c]);
  EXPECT_THROW(slice_columns(x, 6, out), Error);
}

}  // namespace
}  // namespace moelab
