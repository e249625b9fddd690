// RMSNorm on the GPU against the CPU reference (f32: tight; bf16 activations: the bf16 policy of
// tests/README.md), with guard values around the outputs to catch out-of-bounds writes.
#include <gtest/gtest.h>

#include "core/ops/rmsnorm.h"
#include "tests/gpu/gpu_harness.h"

namespace moelab {
namespace {
using testing::randn;

class RmsnormCuda : public testing::GpuTest, public ::testing::WithParamInterface<std::pair<Shape, DType>> {};

using testing::Guarded;

TEST_P(RmsnormCuda, MatchesCpuReference) {
  const auto [shape, act] = GetParam();
  const int64_t dim = shape[-1], rows = shape.numel() / dim;
  const bool bf16 = act == DType::BF16;
  Tensor x = randn(shape, DType::F32, 21), w = randn({dim}, DType::F32, 22, 0.5, 1.0), gy = randn(shape, DType::F32, 23);
  if (bf16) {  // the CPU sees exactly the bf16 values the GPU sees
    x = x.to(DType::BF16).to(DType::F32);
    gy = gy.to(DType::BF16).to(DType::F32);
  }
  Tensor y = Tensor::empty(shape, DType::F32), rstd = Tensor::empty({rows}, DType::F32);
  Tensor gx = Tensor::empty(shape, DType::F32), gw = randn({dim}, DType::F32, 24);
  Tensor gw_gpu_in = gw.to(Device::CUDA);
  rmsnorm_forward(testing::gpu_exec(), x, w, 1e-6f, y, rstd);
  rmsnorm_backward(testing::gpu_exec(), gy, x, w, rstd, gx, gw);

  Guarded dy(shape, act), dgx(shape, act), drstd({rows}, DType::F32);
  Tensor dx = x.to(act).to(Device::CUDA), dgy = gy.to(act).to(Device::CUDA), dw = w.to(Device::CUDA);
  rmsnorm_forward(testing::gpu_exec(), dx, dw, 1e-6f, dy.view, drstd.view);
  rmsnorm_backward(testing::gpu_exec(), dgy, dx, dw, drstd.view, dgx.view, gw_gpu_in);

  const double atol = bf16 ? 2e-2 : 1e-5, rtol = bf16 ? 1.6e-2 : 1e-5;  // tests/README.md
  EXPECT_TRUE(testing::close(dy.view.to(Device::CPU).to(DType::F32), y, atol, rtol)) << "y";
  EXPECT_TRUE(testing::close(drstd.view, rstd, 1e-5, 1e-5)) << "rstd";
  EXPECT_TRUE(testing::close(dgx.view.to(Device::CPU).to(DType::F32), gx, atol, rtol)) << "grad_x";
  EXPECT_TRUE(testing::close(gw_gpu_in, gw, 1e-4 * rows, 1e-4)) << "grad_weight (accumulated)";
  EXPECT_TRUE(dy.guards_intact() && dgx.guards_intact() && drstd.guards_intact()) << "write outside the output";
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsnormCuda,
                         ::testing::Values(std::make_pair(Shape{3, 7}, DType::F32), std::make_pair(Shape{1, 1, 33}, DType::F32),
                                           std::make_pair(Shape{2, 65, 200}, DType::F32),
                                           std::make_pair(Shape{4, 100, 768}, DType::F32),
                                           std::make_pair(Shape{3, 7}, DType::BF16), std::make_pair(Shape{4, 100, 768}, DType::BF16)),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

using RmsnormCudaDeterminism = testing::GpuTest;

TEST_F(RmsnormCudaDeterminism, TwoRunsAreBitIdentical) {
  Tensor x = randn({257, 300}, DType::F32, 31).to(Device::CUDA), w = randn({300}, DType::F32, 32).to(Device::CUDA);
  Tensor gy = randn({257, 300}, DType::F32, 33).to(Device::CUDA);
  Tensor y = Tensor::empty({257, 300}, DType::F32, Device::CUDA), r = Tensor::empty({257}, DType::F32, Device::CUDA);
  Tensor gx = Tensor::empty({257, 300}, DType::F32, Device::CUDA);
  Tensor gw1 = Tensor::zeros({300}, DType::F32, Device::CUDA), gw2 = Tensor::zeros({300}, DType::F32, Device::CUDA);
  rmsnorm_forward(testing::gpu_exec(), x, w, 1e-6f, y, r);
  rmsnorm_backward(testing::gpu_exec(), gy, x, w, r, gx, gw1);
  rmsnorm_backward(testing::gpu_exec(), gy, x, w, r, gx, gw2);
  EXPECT_TRUE(testing::close(gw1, gw2, 0.0, 0.0));
}

}  // namespace
}  // namespace moelab
