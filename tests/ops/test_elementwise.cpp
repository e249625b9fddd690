// add / axpy / concat_columns / split_columns against direct loops; concat and split are each
// other's inverse (and so each other's backward); cast against the conversions of core/dtype.h.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "core/ops/columns.h"
#include "core/ops/elementwise.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::randn;

TEST(Elementwise, AddAndAxpy) {
  Tensor a = randn({3, 5}, DType::F64, 1), b = randn({15}, DType::F64, 2), out = Tensor::empty({3, 5}, DType::F64);
  add(Exec{}, a, b, out);
  for (int i = 0; i < 15; ++i) EXPECT_EQ(out.data<double>()[i], a.data<double>()[i] + b.data<double>()[i]);
  Tensor y = out.to(Device::CPU);
  axpy(Exec{}, -0.5, a, y);
  for (int i = 0; i < 15; ++i) EXPECT_DOUBLE_EQ(y.data<double>()[i], out.data<double>()[i] - 0.5 * a.data<double>()[i]);
  add(Exec{}, a, b, a);  // in place
  EXPECT_TRUE(testing::close(a, out, 0, 0));
  EXPECT_THROW(add(Exec{}, a, Tensor::zeros({14}, DType::F64), out), Error);
  EXPECT_THROW(add(Exec{}, a, b.to(DType::F32), out), Error);
}

TEST(Columns, SplitInvertsConcat) {
  Tensor a = randn({2, 3, 5}, DType::F32, 3), b = randn({2, 3, 2}, DType::F32, 4);
  Tensor whole = Tensor::empty({2, 3, 7}, DType::F32);
  concat_columns(Exec{}, a, b, whole);
  for (int r = 0; r < 6; ++r) {
    for (int c = 0; c < 5; ++c) EXPECT_EQ(whole.data<float>()[r * 7 + c], a.data<float>()[r * 5 + c]);
    for (int c = 0; c < 2; ++c) EXPECT_EQ(whole.data<float>()[r * 7 + 5 + c], b.data<float>()[r * 2 + c]);
  }
  Tensor a2 = Tensor::empty({6, 5}, DType::F32), b2 = Tensor::empty({6, 2}, DType::F32);
  split_columns(Exec{}, whole, a2, b2);
  EXPECT_TRUE(testing::close(a2, a, 0, 0));
  EXPECT_TRUE(testing::close(b2, b, 0, 0));
  try {
    split_columns(Exec{}, whole, Tensor::empty({6, 4}, DType::F32), b2);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("do not split f32[2,3,7]@cpu"), std::string::npos) << e.what();
  }
}

TEST(Columns, SliceColumns) {
  Tensor x = testing::randint({3, 9}, 50, 5), out = Tensor::empty({3, 4}, DType::I32);
  slice_columns(Exec{}, x, 2, out);
  for (int r = 0; r < 3; ++r)
    for (int c = 0; c < 4; ++c) EXPECT_EQ(out.data<int32_t>()[r * 4 + c], x.data<int32_t>()[r * 9 + 2 + c]);
  EXPECT_THROW(slice_columns(Exec{}, x, 6, out), Error);
}


// Bits of a tensor's elements, to compare casts exactly (NaN included).
std::vector<uint8_t> bytes_of(const Tensor& t) {
  std::vector<uint8_t> v(t.nbytes());
  std::memcpy(v.data(), t.raw(), v.size());
  return v;
}

TEST(Cast, EveryPairOfFloatDtypesMatchesTensorTo) {
  const DType dtypes[] = {DType::F32, DType::F64, DType::BF16};
  const Tensor base = randn({3, 7, 5}, DType::F64, 6, 3.0);
  for (DType from : dtypes) {
    const Tensor x = base.to(from);
    for (DType to : dtypes) {
      Tensor y = Tensor::empty(x.shape(), to);
      y.fill(-77.0);
      cast(Exec{}, x, y);
      EXPECT_EQ(bytes_of(y), bytes_of(x.to(to))) << dtype_name(from) << " -> " << dtype_name(to);
    }
  }
}

TEST(Cast, RoundsToNearestEven) {
  // bf16 keeps 7 mantissa bits: its ulp at 1 is 2^-7.
  const float in[] = {1.0f + 0x1p-8f,             // a tie: to the even 1.0
                      1.0f + 0x1p-7f + 0x1p-8f,   // a tie: to the even 1 + 2^-6
                      1.0f + 0x1p-8f + 0x1p-20f,  // above the tie: up to 1 + 2^-7
                      -(1.0f + 0x1p-8f), 3.4e38f, -0.0f,  // 3.4e38 rounds past bf16's largest finite: inf
                      1e-40f};                    // an f32 subnormal: to bf16's smallest subnormal 2^-133
  const float expect[] = {1.0f, 1.0f + 0x1p-6f, 1.0f + 0x1p-7f, -1.0f, INFINITY, -0.0f, 0x1p-133f};
  constexpr int n = 7;
  Tensor x = Tensor::empty({n}, DType::F32), y = Tensor::empty({n}, DType::BF16), back = Tensor::empty({n}, DType::F32);
  std::memcpy(x.raw(), in, sizeof(in));
  cast(Exec{}, x, y);
  cast(Exec{}, y, back);  // bf16 -> f32 is exact
  for (int i = 0; i < n; ++i) EXPECT_EQ(float_bits(back.data<float>()[i]), float_bits(expect[i])) << "element " << i << ": " << in[i];

  // f64 -> f32 rounds to nearest even too; f64 -> bf16 goes through f32 (two roundings, as Tensor::to).
  Tensor xd = Tensor::empty({2}, DType::F64), yf = Tensor::empty({2}, DType::F32), yb = Tensor::empty({2}, DType::BF16);
  xd.data<double>()[0] = 1.0 + 0x1p-24;            // an f32 tie: to the even 1.0f
  xd.data<double>()[1] = 1.0 + 0x1p-8 + 0x1p-40;  // f32 rounds it to the bf16 tie 1 + 2^-8, which goes to 1.0
  cast(Exec{}, xd, yf);
  EXPECT_EQ(yf.data<float>()[0], 1.0f);
  EXPECT_EQ(yf.data<float>()[1], 1.0f + 0x1p-8f);
  cast(Exec{}, xd, yb);
  EXPECT_EQ(bytes_of(yb), bytes_of(xd.to(DType::BF16)));
  EXPECT_EQ(bf16_bits_to_float(yb.data<bf16_t>()[1].bits), 1.0f);

  // NaN stays NaN.
  Tensor xn = Tensor::empty({1}, DType::F32), yn = Tensor::empty({1}, DType::BF16);
  xn.data<float>()[0] = std::nanf("");
  cast(Exec{}, xn, yn);
  EXPECT_TRUE(std::isnan(bf16_bits_to_float(yn.data<bf16_t>()[0].bits)));
}

TEST(Cast, SameDtypeIsACopyForAnyDtype) {
  Tensor ids = testing::randint({4, 6}, 1000, 7), ids2 = Tensor::empty({4, 6}, DType::I32);
  cast(Exec{}, ids, ids2);
  EXPECT_EQ(bytes_of(ids2), bytes_of(ids));
  Tensor a = randn({33}, DType::F32, 8), keep = a.to(Device::CPU);
  cast(Exec{}, a, a);  // the same tensor: nothing to do
  EXPECT_EQ(bytes_of(a), bytes_of(keep));
}

TEST(Cast, Errors) {
  Tensor x = randn({4, 6}, DType::F32, 9);
  testing::expect_error([&] { cast(Exec{}, x, Tensor::empty({4, 5}, DType::BF16)); }, "cast");
  testing::expect_error([&] { cast(Exec{}, x, Tensor::empty({4, 6}, DType::I32)); }, "expected f32, f64 or bf16");
  testing::expect_error([&] { cast(Exec{}, x, Tensor::empty({4, 6}, DType::FP8_E4M3)); }, "expected f32, f64 or bf16");
  // y inside x's memory (a different dtype or a shifted view) would read elements already overwritten.
  Tensor big = randn({8, 6}, DType::F32, 10);
  testing::expect_error([&] { cast(Exec{}, big.slice(0, 4), big.slice(2, 6)); }, "overlaps x");
  Tensor half = Tensor::view_of(big.storage(), 0, {4, 6}, DType::BF16);
  testing::expect_error([&] { cast(Exec{}, big.slice(0, 4), half); }, "overlaps x");
}

}  // namespace
}  // namespace moelab
