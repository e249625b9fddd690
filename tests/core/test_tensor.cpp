// Tensor views, reshapes, copies, dtype casts and the errors for misuse.
#include <gtest/gtest.h>

#include "core/device.h"
#include "core/tensor.h"

namespace moelab {
namespace {

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Tensor, ShapeBasics) {
  const Shape s{2, 3, 5};
  EXPECT_EQ(s.ndim(), 3);
  EXPECT_EQ(s.numel(), 30);
  EXPECT_EQ(s[-1], 5);
  EXPECT_EQ(s.str(), "[2,3,5]");
  EXPECT_EQ(Shape{}.numel(), 1);
  EXPECT_NE(error_of([] { Shape({1, 2, 3, 4, 5}); }).find("at most 4"), std::string::npos);
  EXPECT_NE(error_of([] { Shape({2, -1}); }).find("-1"), std::string::npos);
  EXPECT_NE(error_of([&] { (void)s[3]; }).find("dim 3"), std::string::npos);
}

TEST(Tensor, SliceSharesStorage) {
  Tensor t = Tensor::empty({4, 3}, DType::F32);
  for (int i = 0; i < 12; ++i) t.data<float>()[i] = static_cast<float>(i);
  Tensor rows = t.slice(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 3}));
  EXPECT_EQ(rows.data<float>()[0], 3.0f);
  rows.data<float>()[0] = -1.0f;
  EXPECT_EQ(t.data<float>()[3], -1.0f);
  EXPECT_EQ(rows.storage(), t.storage());
  EXPECT_NE(error_of([&] { t.slice(2, 5); }).find("out of range"), std::string::npos);
}

TEST(Tensor, ReshapeAndAs2d) {
  Tensor t = Tensor::zeros({2, 3, 4}, DType::F32);
  EXPECT_EQ(t.reshape({6, 4}).shape(), (Shape{6, 4}));
  EXPECT_EQ(t.as_2d().shape(), (Shape{6, 4}));
  const std::string err = error_of([&] { t.reshape({5, 5}); });
  EXPECT_NE(err.find("[5,5]"), std::string::npos) << err;
  EXPECT_NE(err.find("f32[2,3,4]@cpu"), std::string::npos) << err;
}

TEST(Tensor, DataChecksDtype) {
  Tensor t = Tensor::empty({3}, DType::BF16);
  const std::string err = error_of([&] { t.data<float>(); });
  EXPECT_NE(err.find("data<f32>"), std::string::npos) << err;
  EXPECT_NE(err.find("bf16"), std::string::npos) << err;
  EXPECT_EQ(err.rfind("core/tensor.h:", 0), 0u) << "the message starts with file:line, relative to the source tree: " << err;
}

TEST(Tensor, CastRoundsThroughTheConversions) {
  Tensor t = Tensor::empty({3}, DType::F32);
  t.data<float>()[0] = 1.0f;
  t.data<float>()[1] = 1.00390625f;  // a bf16 tie -> 1.0
  t.data<float>()[2] = 500.0f;       // fp8 saturates -> 448
  Tensor b = t.to(DType::BF16);
  EXPECT_EQ(b.data<bf16_t>()[0].bits, 0x3f80);
  EXPECT_EQ(b.data<bf16_t>()[1].bits, 0x3f80);
  Tensor f8 = t.to(DType::FP8_E4M3).to(DType::F32);
  EXPECT_EQ(f8.data<float>()[2], 448.0f);
  Tensor d = t.to(DType::F64);
  EXPECT_EQ(d.data<double>()[1], 1.00390625);
}

TEST(Tensor, CopyAndFill) {
  Tensor a = Tensor::empty({2, 2}, DType::F64);
  a.fill(2.5);
  Tensor b = Tensor::zeros({2, 2}, DType::F64);
  b.copy_from(a);
  EXPECT_EQ(b.data<double>()[3], 2.5);
  Tensor c = Tensor::zeros({4}, DType::F64);
  EXPECT_NE(error_of([&] { c.copy_from(a); }).find("differ"), std::string::npos);
  Tensor moved = a.to(Device::CPU);
  EXPECT_NE(moved.storage(), a.storage());
  EXPECT_EQ(moved.data<double>()[0], 2.5);
}

TEST(Tensor, ViewOutsideStorageIsAnError) {
  auto storage = std::make_shared<Storage>(64, Device::CPU);
  EXPECT_NO_THROW(Tensor::view_of(storage, 32, {8}, DType::F32));
  EXPECT_NE(error_of([&] { Tensor::view_of(storage, 36, {8}, DType::F32); }).find("needs 68 bytes"), std::string::npos);
}

TEST(Tensor, CpuAllocationsAreAligned) {
  for (int64_t n : {1, 3, 17, 1000}) {
    Tensor t = Tensor::empty({n}, DType::FP8_E4M3);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 256, 0u);
  }
}

TEST(Tensor, CudaTensorWithoutGpuIsAClearError) {
  if (cuda_available()) GTEST_SKIP() << "a GPU is visible";
  const std::string err = error_of([] { Tensor::empty({4}, DType::F32, Device::CUDA); });
  EXPECT_TRUE(err.find("no GPU") != std::string::npos || err.find("without CUDA") != std::string::npos) << err;
}

}  // namespace
}  // namespace moelab
