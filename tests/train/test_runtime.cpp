// train/runtime.h on the CPU: what --device / --precision resolve to, the errors for what this
// machine cannot run, and models placed on the CPU (the CUDA side is tests/gpu/test_model_cuda.cpp);
// AdamW's weight-decay groups.
#include <gtest/gtest.h>
#include <unistd.h>

#include "core/device.h"
#include "core/rng.h"
#include "tests/harness.h"
#include "tests/nn/nn_harness.h"
#include "train/optimizer.h"
#include "train/runtime.h"

namespace moelab {
namespace {

TEST(Runtime, CpuIsFp32WithoutAGpuContext) {
  for (const char* precision : {"auto", "fp32"}) {
    const Runtime rt = make_runtime("cpu", precision);
    EXPECT_EQ(rt.device, Device::CPU);
    EXPECT_EQ(rt.act, DType::F32);
    EXPECT_EQ(rt.gpu, nullptr);
    EXPECT_EQ(rt.describe(), "cpu fp32");
    EXPECT_FALSE(rt.fp8.enabled);
  }
}

// The CPU's arena: 8 GiB of address space, or the prediction plus the margin when a model's step
// needs more (the small preset's needs about 32 GiB); a step that cannot fit in this machine's
// memory is an error that says what to lower, not an allocation failure.
TEST(Runtime, CpuArenaFollowsThePredictionAndTheMachinesMemory) {
  const Runtime rt = make_runtime("cpu", "fp32");
  EXPECT_EQ(rt.arena_bytes(1e6), size_t{8} << 30);
  testing::expect_error([&] { rt.arena_bytes(1e15); }, "lower train.batch_size or train.seq_len");
  const double ram = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
  const double big = 9e9;  // more than 8 GiB once the margin is added
  if (1.1 * big + 1e8 > ram) GTEST_SKIP() << "this machine has too little memory for a 10 GB arena";
  const size_t bytes = rt.arena_bytes(big);
  EXPECT_GE(static_cast<double>(bytes), 1.1 * big);
  EXPECT_LT(static_cast<double>(bytes), 1.1 * big + static_cast<double>(size_t{64} << 20) + 1.0);
  EXPECT_EQ(bytes % Arena::kAlignment, 0u);
}

TEST(Runtime, Fp8OnTheCpuIsF32AroundEmulatedFp8LinearGemms) {
  Arena arena(1 << 20, Device::CPU);
  for (const char* precision : {"fp8", "fp8_pow2"}) {
    const Runtime rt = make_runtime("cpu", precision);
    EXPECT_EQ(rt.act, DType::F32);
    EXPECT_TRUE(rt.fp8.enabled);
    EXPECT_EQ(rt.fp8.pow2_scales, std::string(precision) == "fp8_pow2");
    const Context ctx = rt.context(arena, 1, 1);
    EXPECT_TRUE(ctx.fp8.enabled);  // what the Linear layers read
    EXPECT_EQ(ctx.fp8.pow2_scales, rt.fp8.pow2_scales);
  }
  EXPECT_EQ(make_runtime("cpu", "fp8").describe(), "cpu fp32, Linear GEMMs in fp8 (exact emulation)");
  {
    const Runtime bf16 = make_runtime("cpu", "bf16");
    EXPECT_EQ(bf16.act, DType::F32);  // the CPU keeps f32 activations; only the GEMM operands are bf16
    EXPECT_TRUE(bf16.cpu_bf16);
    EXPECT_EQ(bf16.describe(), "cpu fp32, Linear and head GEMMs on bf16 operands (f32 sums, f32 master weights)");
    Arena arena(1 << 20, Device::CPU);
    EXPECT_TRUE(bf16.context(arena, 1, 1).cpu_bf16);  // what the Linear layers and the head read
    EXPECT_FALSE(make_runtime("cpu", "auto").cpu_bf16);
    EXPECT_FALSE(make_runtime("cpu", "fp8").cpu_bf16);
  }
  EXPECT_EQ(make_runtime("cpu", "fp8_pow2").describe(),
            "cpu fp32, Linear GEMMs in fp8 (exact emulation, power-of-two scales)");
}

TEST(Runtime, WhatCannotRunHereIsAClearError) {
  testing::expect_error([] { make_runtime("tpu", "auto"); }, "device 'tpu' is not one of cpu, cuda");
  testing::expect_error([] { make_runtime("cpu", "fp16"); }, "precision 'fp16' is not one of auto, fp32, bf16, fp8, fp8_pow2");
  if (!cuda_available()) testing::expect_error([] { make_runtime("cuda", "auto"); }, "device cuda: ");
}

TEST(Runtime, NewModelIsTheSeededModelAndPlacingOnTheCpuKeepsIt) {
  const ModelConfig cfg = testing::tiny_model_config();
  const Runtime rt = make_runtime("cpu", "auto");
  std::unique_ptr<Model> a = new_model(cfg, 42, rt);
  Model b(cfg);
  b.allocate(Device::CPU, DType::F32);
  b.initialize(42);
  EXPECT_FALSE(a->params().has_compute_copy());
  EXPECT_TRUE(testing::close(a->params().flat_params(), b.params().flat_params(), 0.0, 0.0));
  const Model* raw = a.get();
  EXPECT_EQ(place_model(std::move(a), rt).get(), raw);  // already where it runs: the same model
}

// Mixed precision's bookkeeping, checkable on the CPU: AdamW's step rewrites the bf16 compute copy
// so that it stays the master rounded to nearest even.
TEST(Runtime, OptimizerStepKeepsTheComputeCopyRounded) {
  Model model(testing::tiny_model_config());
  model.allocate(Device::CPU, DType::F32);
  model.initialize(3);
  ParamBuffer& params = model.params();
  params.add_compute_copy(DType::BF16);
  AdamW optimizer(params, AdamWConfig{});
  for (int step = 0; step < 3; ++step) {
    params.flat_grads().copy_from(testing::randn(params.flat_grads().shape(), DType::F32, 10 + step));
    optimizer.step(Exec{}, 1e-2);
  }
  const Tensor expected = params.flat_params().to(DType::BF16);
  for (const auto& e : params.entries())
    for (int64_t i = 0; i < e.spec.shape.numel(); ++i)
      ASSERT_EQ(params.flat_compute().data<bf16_t>()[e.offset + i].bits, expected.data<bf16_t>()[e.offset + i].bits)
          << e.spec.name << " [" << i << "]";
}

// Which parameters AdamW decays (its groups follow each parameter's declared flag): with zero
// gradients the moments stay 0 and one step only applies the decoupled decay, so every decayed
// weight (attention and expert projections, the router's gate, the LM head) is exactly
// p x (1 - lr wd) and every exempt one (norms, the embedding) unchanged; the aux-loss-free bias is
// a buffer, which the optimizer never touches.
TEST(AdamW, DecaysTheMatricesAndExemptsNormsAndEmbeddings) {
  ModelConfig cfg = testing::tiny_model_config();
  cfg.aux_free_bias = true;
  Model model(cfg);
  model.allocate(Device::CPU, DType::F64);
  model.initialize(5);
  fill_normal(model.buffers().flat_params(), 6, 0, 1.0, 0.5);  // a bias away from 0
  auto snapshot = [](const Tensor& t) {
    Tensor c = Tensor::empty(t.shape(), t.dtype());
    c.copy_from(t);
    return c;
  };
  const Tensor params0 = snapshot(model.params().flat_params()), bias0 = snapshot(model.buffers().flat_params());
  model.params().zero_grads();
  AdamWConfig hp;
  hp.weight_decay = 0.25;
  const double lr = 0.1;
  AdamW(model.params(), hp).step(Exec{}, lr);
  int decayed = 0, exempt = 0;
  for (const ParamBuffer::Entry& e : model.params().entries()) {
    const std::string& name = e.spec.name;
    const bool exempt_by_name = name.find("norm") != std::string::npos || name == "model.embed_tokens.weight";
    EXPECT_EQ(e.spec.weight_decay, !exempt_by_name) << name;
    const double factor = exempt_by_name ? 1.0 : 1 - lr * hp.weight_decay;
    const double* now = model.params().param(name).data<double>();
    const double* before = params0.data<double>() + e.offset;
    for (int64_t i = 0; i < e.spec.shape.numel(); ++i)
      ASSERT_NEAR(now[i], before[i] * factor, 1e-15) << name << "[" << i << "]";
    (exempt_by_name ? exempt : decayed) += 1;
  }
  EXPECT_GT(decayed, 10);
  EXPECT_GT(exempt, 5);
  EXPECT_TRUE(testing::close(model.buffers().flat_params(), bias0, 0.0, 0.0)) << "the router bias moved";
}

}  // namespace
}  // namespace moelab
