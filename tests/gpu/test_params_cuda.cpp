// A ParamBuffer initialised on the GPU holds the same values as one initialised on the CPU (the
// same Philox streams; normals within one ulp, see core/rng.h), and the arena works on the GPU.
#include <gtest/gtest.h>

#include <cmath>

#include "core/arena.h"
#include "core/params.h"
#include "tests/harness.h"

namespace moelab {
namespace {

using ParamsCuda = testing::GpuTest;

TEST_F(ParamsCuda, InitialisationMatchesCpu) {
  auto declare = [](ParamBuffer& pb) {
    pb.declare({"model.embed_tokens.weight", {97, 33}, Init::Normal, 0.02f, false});
    pb.declare({"model.norm.weight", {33}, Init::Ones, 0.0f, false});
    pb.declare({"lm_head.weight", {97, 33}, Init::Normal, 0.006f, true});
  };
  ParamBuffer cpu, gpu;
  declare(cpu);
  declare(gpu);
  cpu.allocate(Device::CPU);
  gpu.allocate(Device::CUDA);
  cpu.initialize(5);
  gpu.initialize(5);
  Tensor g = gpu.flat_params().to(Device::CPU);
  for (int64_t i = 0; i < cpu.numel_padded(); ++i) {
    const float a = g.data<float>()[i], b = cpu.flat_params().data<float>()[i];
    if (a != b) {
      ASSERT_EQ(std::nextafter(b, a), a) << "element " << i;
    }
  }
  EXPECT_TRUE(testing::close(gpu.flat_grads(), cpu.flat_grads(), 0.0, 0.0)) << "gradients start at zero";
}

TEST_F(ParamsCuda, ArenaOnTheGpu) {
  Arena arena(1 << 20, Device::CUDA);
  Tensor a = arena.alloc({100, 3}, DType::BF16);
  EXPECT_EQ(a.device(), Device::CUDA);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(arena.alloc({1}, DType::F32).raw()) % 256, 0u);
}

}  // namespace
}  // namespace moelab
