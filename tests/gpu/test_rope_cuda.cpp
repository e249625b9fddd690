// RoPE on the GPU against the CPU reference, forward and backward, out of place (guarded outputs)
// and in place (as the model calls it: rope_forward(q, q, ...)), for interleaved pairs at odd and
// even offsets, single and many heads, and large positions (decoding after a long cache).
#include <gtest/gtest.h>

#include "core/ops/rope.h"
#include "tests/gpu/gpu_harness.h"

namespace moelab {
namespace {
using testing::Guarded;
using testing::randn;

struct RopeCase {
  Shape shape;  // [B, T, H, Dh]
  int64_t offset, rope_dim, pos_offset;
  DType act;
};

class RopeCuda : public testing::GpuTest, public ::testing::WithParamInterface<RopeCase> {};

TEST_P(RopeCuda, MatchesCpuReference) {
  const RopeCase c = GetParam();
  const double theta = 10000.0;
  const double atol = testing::act_atol(c.act), rtol = testing::act_rtol(c.act);
  Tensor x = randn(c.shape, DType::F32, 81), gy = randn(c.shape, DType::F32, 82);
  if (c.act == DType::BF16) {
    x = testing::bf16_round(x);
    gy = testing::bf16_round(gy);
  }
  Tensor y = Tensor::empty(c.shape, DType::F32), gx = Tensor::empty(c.shape, DType::F32);
  rope_forward(testing::gpu_exec(), x, y, c.offset, c.rope_dim, theta, c.pos_offset);
  rope_backward(testing::gpu_exec(), gy, gx, c.offset, c.rope_dim, theta, c.pos_offset);

  // Out of place.
  Guarded dy(c.shape, c.act), dgx(c.shape, c.act);
  const Tensor dx = testing::to_gpu(x, c.act), dgy = testing::to_gpu(gy, c.act);
  rope_forward(testing::gpu_exec(), dx, dy.view, c.offset, c.rope_dim, theta, c.pos_offset);
  rope_backward(testing::gpu_exec(), dgy, dgx.view, c.offset, c.rope_dim, theta, c.pos_offset);
  EXPECT_TRUE(testing::close(dy.host_f32(), y, atol, rtol)) << "y";
  EXPECT_TRUE(testing::close(dgx.host_f32(), gx, atol, rtol)) << "grad_x";
  EXPECT_TRUE(dy.guards_intact() && dgx.guards_intact()) << "write outside the output";
  EXPECT_TRUE(testing::close(testing::to_host(dx), x, 0.0, 0.0)) << "the input must stay untouched";

  // In place, inside guards.
  Guarded ix(c.shape, c.act), igy(c.shape, c.act);
  ix.view.copy_from(dx);
  igy.view.copy_from(dgy);
  rope_forward(testing::gpu_exec(), ix.view, ix.view, c.offset, c.rope_dim, theta, c.pos_offset);
  rope_backward(testing::gpu_exec(), igy.view, igy.view, c.offset, c.rope_dim, theta, c.pos_offset);
  EXPECT_TRUE(testing::close(ix.host_f32(), y, atol, rtol)) << "y in place";
  EXPECT_TRUE(testing::close(igy.host_f32(), gx, atol, rtol)) << "grad_x in place";
  EXPECT_TRUE(ix.guards_intact() && igy.guards_intact()) << "write outside the tensor (in place)";

  // The rotation really happened (the test cannot pass on a copy).
  EXPECT_FALSE(testing::close(y, x, 1e-3, 0.0)) << "y must differ from x";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, RopeCuda,
    ::testing::Values(RopeCase{{1, 2, 1, 2}, 0, 2, 0, DType::F32},          // a single pair
                      RopeCase{{2, 7, 3, 11}, 3, 6, 1, DType::F32},         // odd offset and head dim
                      RopeCase{{3, 33, 2, 64}, 32, 32, 5, DType::F32},      // query heads [nope ; rope]
                      RopeCase{{2, 65, 1, 64}, 0, 64, 0, DType::F32},       // the shared rope key
                      RopeCase{{2, 17, 4, 192}, 128, 64, 4093, DType::F32}, // far positions
                      RopeCase{{2, 7, 3, 11}, 3, 6, 1, DType::BF16},
                      RopeCase{{2, 17, 4, 192}, 128, 64, 4093, DType::BF16}),
    [](const auto& info) { return "case" + std::to_string(info.index); });

using RopeCudaChecks = testing::GpuTest;

TEST_F(RopeCudaChecks, BackwardInvertsForward) {
  const Tensor x = randn({2, 9, 3, 16}, DType::F32, 91).to(Device::CUDA);
  Tensor y = Tensor::empty({2, 9, 3, 16}, DType::F32, Device::CUDA);
  rope_forward(testing::gpu_exec(), x, y, 4, 12, 10000.0, 100);
  rope_backward(testing::gpu_exec(), y, y, 4, 12, 10000.0, 100);
  EXPECT_TRUE(testing::close(y, x, 1e-5, 1e-5));
}

TEST_F(RopeCudaChecks, DtypeError) {
  const Tensor x = Tensor::zeros({1, 2, 1, 4}, DType::F64, Device::CUDA);
  testing::expect_error([&] { rope_forward(testing::gpu_exec(), x, x, 0, 4, 10000.0); },
                        "rope_forward: x is f64[1,2,1,4]@cuda, expected f32 or bf16 on CUDA");
}

}  // namespace
}  // namespace moelab
