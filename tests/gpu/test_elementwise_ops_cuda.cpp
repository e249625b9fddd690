// What the table of tests/gpu/test_backend_ops_cuda.cpp does not cover of the small CUDA ops:
// softmax rows that sum to one and repeat bit for bit, dtype errors, add / axpy in place, the casts
// (bits, special values), and concat / split / slice_columns in every dtype (i32 included), with
// guard values around every output. Copies must match exactly.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/ops/activation.h"
#include "core/ops/columns.h"
#include "core/ops/elementwise.h"
#include "tests/gpu/gpu_harness.h"

namespace moelab {
namespace {
using testing::Guarded;
using testing::randn;

// A random CPU f32 input holding exactly the values a tensor of `act` can hold.
Tensor act_input(const Shape& shape, DType act, uint64_t seed, double std = 1.0) {
  Tensor t = randn(shape, DType::F32, seed, std);
  return act == DType::BF16 ? testing::bf16_round(t) : t;
}

// ---------------------------------------------------------------------------------------------- softmax

using ActivationCudaChecks = testing::GpuTest;

TEST_F(ActivationCudaChecks, SoftmaxRowsSumToOneAndAreDeterministic) {
  // Router-sized rows (E = 256) and a wide one, with large logits (the max shift must work).
  for (const Shape shape : {Shape{300, 256}, Shape{5, 5000}}) {
    const Tensor x = randn(shape, DType::F32, 131, 30.0).to(Device::CUDA), gy = randn(shape, DType::F32, 132).to(Device::CUDA);
    Tensor y1 = Tensor::empty(shape, DType::F32, Device::CUDA), y2 = Tensor::empty(shape, DType::F32, Device::CUDA);
    Tensor g1 = Tensor::empty(shape, DType::F32, Device::CUDA), g2 = Tensor::empty(shape, DType::F32, Device::CUDA);
    softmax_forward(testing::gpu_exec(), x, y1);
    softmax_forward(testing::gpu_exec(), x, y2);
    softmax_backward(testing::gpu_exec(), gy, y1, g1);
    softmax_backward(testing::gpu_exec(), gy, y1, g2);
    EXPECT_TRUE(testing::close(y1, y2, 0.0, 0.0)) << "softmax forward, two runs";
    EXPECT_TRUE(testing::close(g1, g2, 0.0, 0.0)) << "softmax backward, two runs";
    const Tensor h = y1.to(Device::CPU);
    for (int64_t r = 0; r < shape[0]; ++r) {
      double sum = 0;
      for (int64_t c = 0; c < shape[1]; ++c) sum += h.data<float>()[r * shape[1] + c];
      ASSERT_NEAR(sum, 1.0, 1e-5) << "row " << r;
    }
  }
}

TEST_F(ActivationCudaChecks, DtypeError) {
  const Tensor x = Tensor::zeros({2, 3}, DType::F64, Device::CUDA);
  testing::expect_error([&] { softmax_forward(testing::gpu_exec(), x, x); },
                        "softmax_forward: x is f64[2,3]@cuda, expected f32 or bf16 on CUDA");
  testing::expect_error([&] { sigmoid_backward(testing::gpu_exec(), x, x, x); },
                        "sigmoid_backward: y is f64[2,3]@cuda, expected f32 or bf16");
}

// ---------------------------------------------------------------------------------------------- add, axpy, cast

using ElementwiseCuda = testing::GpuTest;

// Aliased: out = a (the residual add in place) and y = x (y += alpha * y).
TEST_F(ElementwiseCuda, AddAndAxpyInPlace) {
  for (const DType act : {DType::F32, DType::BF16}) {
    const Shape shape{4, 100, 257};
    const double atol = testing::act_atol(act), rtol = testing::act_rtol(act);
    const Tensor a = act_input(shape, act, 141), b = act_input(shape, act, 142);
    Tensor sum = Tensor::empty(shape, DType::F32);
    add(Exec{}, a, b, sum);
    const Tensor da = testing::to_gpu(a, act), db = testing::to_gpu(b, act);
    Guarded ia(shape, act), iy(shape, act);
    ia.view.copy_from(da);
    add(testing::gpu_exec(), ia.view, db, ia.view);
    EXPECT_TRUE(testing::close(ia.host_f32(), sum, atol, rtol)) << "add in place, " << dtype_name(act);
    iy.view.copy_from(da);
    axpy(testing::gpu_exec(), 0.5, iy.view, iy.view);
    Tensor a15 = a.to(Device::CPU);
    axpy(Exec{}, 0.5, a, a15);
    EXPECT_TRUE(testing::close(iy.host_f32(), a15, atol, rtol)) << "axpy with y = x, " << dtype_name(act);
    EXPECT_TRUE(ia.guards_intact() && iy.guards_intact()) << "write outside the tensor (in place)";
  }
}

using CastCuda = testing::GpuTest;

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const Tensor h = t.to(Device::CPU);
  std::vector<uint8_t> v(h.nbytes());
  std::memcpy(v.data(), h.raw(), v.size());
  return v;
}

TEST_F(CastCuda, F32ToBf16RoundsLikeTheCpu) {
  // Random values at many scales, plus the ties, overflow, signed zero and subnormals.
  Tensor x = randn({3, 1001}, DType::F32, 151, 100.0);
  const float special[] = {1.0f + 0x1p-8f, 1.0f + 0x1p-7f + 0x1p-8f, -(1.0f + 0x1p-8f), 3.4e38f, -3.4e38f,
                           -0.0f, 1e-40f, -3e-39f, 0x1p-126f, 65504.0f};
  std::memcpy(x.data<float>(), special, sizeof(special));
  Tensor y_cpu = Tensor::empty({3, 1001}, DType::BF16);
  cast(testing::gpu_exec(), x, y_cpu);
  Guarded y({3, 1001}, DType::BF16);
  cast(testing::gpu_exec(), x.to(Device::CUDA), y.view);
  EXPECT_EQ(bytes_of(y.view), bytes_of(y_cpu)) << "f32 -> bf16 bits";
  EXPECT_TRUE(y.guards_intact());

  // bf16 -> f32 is exact.
  Guarded back({3, 1001}, DType::F32);
  cast(testing::gpu_exec(), y.view, back.view);
  Tensor back_cpu = Tensor::empty({3, 1001}, DType::F32);
  cast(testing::gpu_exec(), y_cpu, back_cpu);
  EXPECT_EQ(bytes_of(back.view), bytes_of(back_cpu)) << "bf16 -> f32 bits";
  EXPECT_TRUE(back.guards_intact());
}

TEST_F(CastCuda, SameDtypeCopiesAndErrors) {
  const Tensor ids = testing::randint({5, 7}, 1000, 161).to(Device::CUDA);
  Guarded ids2({5, 7}, DType::I32);
  cast(testing::gpu_exec(), ids, ids2.view);
  EXPECT_EQ(bytes_of(ids2.view), bytes_of(ids));
  EXPECT_TRUE(ids2.guards_intact());
  const Tensor b = testing::to_gpu(randn({65}, DType::F32, 162), DType::BF16);
  Guarded b2({65}, DType::BF16);
  cast(testing::gpu_exec(), b, b2.view);
  EXPECT_EQ(bytes_of(b2.view), bytes_of(b));
  cast(testing::gpu_exec(), b, b);  // the same tensor: nothing to do
  const Tensor d = Tensor::zeros({4}, DType::F64, Device::CUDA);
  testing::expect_error([&] { cast(testing::gpu_exec(), d, Tensor::empty({4}, DType::F32, Device::CUDA)); },
                        "cast: x is f64[4]@cuda, expected f32 or bf16 on CUDA");
  testing::expect_error([&] { cast(testing::gpu_exec(), b, Tensor::empty({64}, DType::F32, Device::CUDA)); }, "cast");
}

// ---------------------------------------------------------------------------------------------- columns

struct ColCase {
  int64_t rows, wa, wb;
  DType dtype;
};

class ColumnsCuda : public testing::GpuTest, public ::testing::WithParamInterface<ColCase> {};

Tensor col_input(const Shape& shape, DType dtype, uint64_t seed) {
  if (dtype == DType::I32) return testing::randint(shape, 50000, seed);
  return act_input(shape, dtype, seed);
}

TEST_P(ColumnsCuda, ConcatSplitSliceMatchCpu) {
  const ColCase c = GetParam();
  const int64_t w = c.wa + c.wb;
  const Tensor a = col_input({c.rows, c.wa}, c.dtype, 171), b = col_input({c.rows, c.wb}, c.dtype, 172);
  const Tensor x = col_input({c.rows, w}, c.dtype, 173);
  // The CPU reference works on the exact stored values (i32 as is; floats in their own dtype).
  const Tensor ha = c.dtype == DType::I32 ? a : a.to(c.dtype), hb = c.dtype == DType::I32 ? b : b.to(c.dtype);
  const Tensor hx = c.dtype == DType::I32 ? x : x.to(c.dtype);
  Tensor cat = Tensor::empty({c.rows, w}, c.dtype), sa = Tensor::empty({c.rows, c.wa}, c.dtype),
         sb = Tensor::empty({c.rows, c.wb}, c.dtype), sl = Tensor::empty({c.rows, c.wb}, c.dtype);
  concat_columns(testing::gpu_exec(), ha, hb, cat);
  split_columns(testing::gpu_exec(), hx, sa, sb);
  slice_columns(testing::gpu_exec(), hx, c.wa, sl);  // a window that starts at an odd column when wa is odd

  Guarded dcat({c.rows, w}, c.dtype), dsa({c.rows, c.wa}, c.dtype), dsb({c.rows, c.wb}, c.dtype),
      dsl({c.rows, c.wb}, c.dtype);
  const Tensor dx = hx.to(Device::CUDA);
  concat_columns(testing::gpu_exec(), ha.to(Device::CUDA), hb.to(Device::CUDA), dcat.view);
  split_columns(testing::gpu_exec(), dx, dsa.view, dsb.view);
  slice_columns(testing::gpu_exec(), dx, c.wa, dsl.view);
  EXPECT_EQ(bytes_of(dcat.view), bytes_of(cat)) << "concat_columns";
  EXPECT_EQ(bytes_of(dsa.view), bytes_of(sa)) << "split_columns a";
  EXPECT_EQ(bytes_of(dsb.view), bytes_of(sb)) << "split_columns b";
  EXPECT_EQ(bytes_of(dsl.view), bytes_of(sl)) << "slice_columns";
  EXPECT_TRUE(dcat.guards_intact() && dsa.guards_intact() && dsb.guards_intact() && dsl.guards_intact())
      << "write outside the output";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, ColumnsCuda,
    ::testing::Values(ColCase{1, 1, 1, DType::F32}, ColCase{3, 7, 2, DType::F32}, ColCase{65, 64, 32, DType::F32},
                      ColCase{33, 512, 64, DType::F32},  // 16-byte words
                      ColCase{5, 2, 4, DType::F32},      // 8-byte words (pitches of 24 bytes)
                      ColCase{5, 3, 5, DType::BF16}, ColCase{65, 64, 8, DType::BF16}, ColCase{7, 1, 33, DType::BF16},
                      ColCase{4, 1, 256, DType::I32},  // a token window [B, T+1] -> inputs / targets
                      ColCase{9, 17, 16, DType::I32}),
    [](const auto& info) { return "case" + std::to_string(info.index); });

}  // namespace
}  // namespace moelab
