// The whole model and the training step on the GPU against the CPU (issue "CUDA backend",
// tests/README.md): the cuBLASLt matmul on odd and misaligned shapes; the tiny models' losses and
// every parameter gradient in fp32 (tight) and bf16 mixed precision (relative error per tensor);
// 50 optimizer steps tracking the CPU's losses; two GPU runs with one seed giving identical losses;
// the aux-loss-free bias update of the whole model (one upload of the loads) equal to the CPU's.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>

#include "core/ops/grad_norm.h"
#include "core/ops/matmul.h"
#include "cuda/blas.h"
#include "tests/gpu/gpu_harness.h"
#include "tests/nn/nn_harness.h"
#include "train/optimizer.h"
#include "train/runtime.h"
#include "train/step.h"

namespace moelab {
namespace {
using testing::randn;

// ---- matmul through cuBLASLt ----

struct MatmulCase {
  int64_t m, k, n;
  DType act;
  int64_t row_offset;  // > 0: x is a slice starting this many rows into a bigger tensor (misaligned)
};

class MatmulCuda : public testing::GpuTest, public ::testing::WithParamInterface<MatmulCase> {};

TEST_P(MatmulCuda, MatchesCpuReference) {
  const MatmulCase c = GetParam();
  Tensor x_big = randn({c.m + c.row_offset, c.k}, DType::F32, 1), w = randn({c.n, c.k}, DType::F32, 2);
  Tensor gy = randn({c.m, c.n}, DType::F32, 3), gw0 = randn({c.n, c.k}, DType::F32, 4);
  if (c.act == DType::BF16) {
    x_big = testing::bf16_round(x_big);
    w = testing::bf16_round(w);
    gy = testing::bf16_round(gy);
  }
  const Tensor x = x_big.slice(c.row_offset, c.row_offset + c.m);
  Tensor y = Tensor::empty({c.m, c.n}, DType::F32), gx = Tensor::empty({c.m, c.k}, DType::F32);
  Tensor gw = Tensor::empty({c.n, c.k}, DType::F32);
  gw.copy_from(gw0);
  matmul_forward(Exec{}, x, w, y);
  matmul_backward(Exec{}, gy, x, w, gx, gw);

  const Tensor dx_big = testing::to_gpu(x_big, c.act);
  const Tensor dx = dx_big.slice(c.row_offset, c.row_offset + c.m);
  const Tensor dw = testing::to_gpu(w, c.act), dgy = testing::to_gpu(gy, c.act);
  testing::Guarded dy({c.m, c.n}, c.act), dgx({c.m, c.k}, c.act);
  const Tensor dgw = gw0.to(Device::CUDA);
  matmul_forward(testing::gpu_exec(), dx, dw, dy.view);
  matmul_backward(testing::gpu_exec(), dgy, dx, dw, dgx.view, dgw);

  // f32: cuBLASLt's summation order differs from Eigen's: ~K ulps. bf16 outputs: one rounding.
  const double atol = c.act == DType::BF16 ? 2e-2 : 1e-5 * std::sqrt(static_cast<double>(c.k + c.n + c.m));
  const double rtol = c.act == DType::BF16 ? 1.6e-2 : 1e-5;
  EXPECT_TRUE(testing::close(dy.host_f32(), y, atol, rtol)) << "y";
  EXPECT_TRUE(testing::close(dgx.host_f32(), gx, atol, rtol)) << "grad_x";
  // grad_w is f32 on both sides (accumulated in f32 from bf16 or f32 inputs).
  EXPECT_TRUE(testing::close(testing::to_host(dgw), gw, 1e-4 * std::sqrt(static_cast<double>(c.m)), 1e-4))
      << "grad_w (accumulated)";
  EXPECT_TRUE(dy.guards_intact() && dgx.guards_intact()) << "write outside the output";
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatmulCuda,
                         ::testing::Values(MatmulCase{1, 1, 1, DType::F32, 0}, MatmulCase{3, 7, 5, DType::F32, 0},
                                           MatmulCase{65, 33, 129, DType::F32, 1},
                                           MatmulCase{256, 512, 384, DType::F32, 0},
                                           MatmulCase{3, 7, 5, DType::BF16, 0},
                                           MatmulCase{65, 33, 129, DType::BF16, 3},
                                           MatmulCase{300, 256, 1000, DType::BF16, 0}),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

using MatmulCudaPlans = testing::GpuTest;

TEST_F(MatmulCudaPlans, OnePlanPerShapeAndBitIdenticalRepeats) {
  GpuContext gpu;
  const Tensor x = testing::to_gpu(randn({77, 64}, DType::F32, 5), DType::BF16);
  const Tensor w = testing::to_gpu(randn({96, 64}, DType::F32, 6), DType::BF16);
  Tensor y1 = Tensor::empty({77, 96}, DType::BF16, Device::CUDA), y2 = Tensor::empty({77, 96}, DType::BF16, Device::CUDA);
  const Exec ex{nullptr, &gpu, nullptr};
  matmul_forward(ex, x, w, y1);
  const size_t plans = gpu.blas().cached_plans();
  matmul_forward(ex, x, w, y2);
  EXPECT_EQ(gpu.blas().cached_plans(), plans) << "the second call of a shape must reuse its plan";
  EXPECT_TRUE(testing::close(testing::to_host(y1), testing::to_host(y2), 0.0, 0.0));
}

// cuda::Blas directly: a strided batch equals one call per matrix, for each transpose combination.
TEST_F(MatmulCudaPlans, StridedBatchEqualsOneCallPerMatrix) {
  GpuContext gpu;
  const int64_t batch = 3, m = 17, n = 24, k = 40;
  for (const bool ta : {false, true})
    for (const bool tb : {false, true}) {
      const Tensor a = testing::to_gpu(randn({batch, m * k}, DType::F32, 11), DType::BF16);
      const Tensor b = testing::to_gpu(randn({batch, k * n}, DType::F32, 12), DType::BF16);
      const Tensor c1 = Tensor::empty({batch, m * n}, DType::F32, Device::CUDA);
      const Tensor c2 = Tensor::empty({batch, m * n}, DType::F32, Device::CUDA);
      cuda::GemmParams p{a.raw(), b.raw(), c1.raw(), m, n, k};
      p.trans_a = ta;
      p.trans_b = tb;
      p.ab_type = cuda::GemmType::BF16;
      p.batch = batch;
      p.stride_a = m * k;
      p.stride_b = k * n;
      p.stride_c = m * n;
      gpu.blas().gemm(p);
      for (int64_t i = 0; i < batch; ++i) {
        cuda::GemmParams q{a.slice(i, i + 1).raw(), b.slice(i, i + 1).raw(), c2.slice(i, i + 1).raw(), m, n, k};
        q.trans_a = ta;
        q.trans_b = tb;
        q.ab_type = cuda::GemmType::BF16;
        gpu.blas().gemm(q);
      }
      // The same products in f32 accumulation; only the algorithm may differ between the two.
      EXPECT_TRUE(testing::close(testing::to_host(c1), testing::to_host(c2), 1e-4, 1e-4))
          << "trans_a " << ta << " trans_b " << tb;
      // And against the CPU: C = op(A) op(B) from the same bf16 values.
      const Tensor ha = testing::to_host(a), hb = testing::to_host(b), hc = testing::to_host(c1);
      double worst = 0;
      for (int64_t i = 0; i < batch; ++i)
        for (int64_t r = 0; r < m; ++r)
          for (int64_t col = 0; col < n; ++col) {
            double s = 0;
            for (int64_t j = 0; j < k; ++j) {
              const double av = ha.data<float>()[i * m * k + (ta ? j * m + r : r * k + j)];
              const double bv = hb.data<float>()[i * k * n + (tb ? col * k + j : j * n + col)];
              s += av * bv;
            }
            worst = std::max(worst, std::abs(s - hc.data<float>()[i * m * n + r * n + col]));
          }
      EXPECT_LT(worst, 1e-3) << "trans_a " << ta << " trans_b " << tb;
    }
}


TEST_F(MatmulCudaPlans, MissingContextIsAClearError) {
  const Tensor x = Tensor::zeros({2, 3}, DType::F32, Device::CUDA), w = Tensor::zeros({4, 3}, DType::F32, Device::CUDA);
  const Tensor y = Tensor::empty({2, 4}, DType::F32, Device::CUDA);
  testing::expect_error([&] { matmul_forward(Exec{}, x, w, y); }, "GpuContext");
}

// ---- the whole model ----

struct ModelCase {
  const char* name;
  ModelConfig cfg;
};

ModelConfig mla_moe_mtp() {
  ModelConfig c = testing::tiny_model_config();
  c.num_nextn_predict_layers = 1;
  c.q_lora_rank = 5;
  return c;
}
ModelConfig mha_dense() {
  ModelConfig c = testing::tiny_model_config();
  c.attention = AttentionKind::MHA;
  c.ffn = FfnKind::Dense;
  c.tie_word_embeddings = true;
  return c;
}
ModelConfig gqa_moe_softmax() {
  ModelConfig c = testing::tiny_model_config();
  c.attention = AttentionKind::GQA;
  c.num_key_value_heads = 1;
  c.scoring_func = ScoreFunc::Softmax;
  c.seq_aux_loss_alpha = 1e-2;
  c.router_z_loss_coef = 1e-3;
  return c;
}

// Loss and flat gradients of one forward + backward.
struct StepOut {
  Model::Losses losses;
  Tensor grads;  // CPU f32 copy of the flat gradient buffer
};

StepOut loss_and_grads(const ModelConfig& cfg, const Runtime& rt, const Tensor& tokens, int64_t B, int64_t T) {
  const std::unique_ptr<Model> model = new_model(cfg, 1234, rt);
  Arena arena(size_t{64} << 20, rt.device);
  const Context ctx = rt.context(arena, B, T);
  Model::Saved saved;
  StepOut out;
  model->forward(ctx, rt.upload(tokens), saved);
  out.losses = model->read_losses(ctx, saved);
  model->backward(ctx, saved);
  out.grads = model->params().flat_grads().to(Device::CPU);
  return out;
}

// Relative error of each parameter's gradient, ||g_gpu - g_cpu|| / ||g_cpu||, the worst one named.
::testing::AssertionResult grads_close(const ModelConfig& cfg, const Tensor& gpu, const Tensor& cpu, double tol) {
  Model declared(cfg);
  double worst = 0;
  std::string worst_name;
  for (const auto& e : declared.params().entries()) {
    double diff = 0, ref = 0;
    for (int64_t i = 0; i < e.spec.shape.numel(); ++i) {
      const double a = gpu.data<float>()[e.offset + i], b = cpu.data<float>()[e.offset + i];
      diff += (a - b) * (a - b);
      ref += b * b;
    }
    const double rel = std::sqrt(diff) / std::max(std::sqrt(ref), 1e-12);
    if (!std::isfinite(rel))
      return ::testing::AssertionFailure() << "gradient of " << e.spec.name << " is not finite on the GPU";
    if (rel > worst) {
      worst = rel;
      worst_name = e.spec.name;
    }
  }
  if (worst <= tol) return ::testing::AssertionSuccess() << "worst relative gradient error " << worst;
  return ::testing::AssertionFailure() << "gradient of " << worst_name << ": relative error " << worst << " > " << tol;
}

class ModelCuda : public testing::GpuTest, public ::testing::WithParamInterface<ModelCase> {};

TEST_P(ModelCuda, Fp32LossAndEveryGradientMatchCpu) {
  const ModelConfig& cfg = GetParam().cfg;
  const int64_t B = 2, T = 9;
  const Tensor tokens = testing::randint({B, T + 1 + cfg.num_nextn_predict_layers}, static_cast<int32_t>(cfg.vocab_size), 7);
  const StepOut cpu = loss_and_grads(cfg, make_runtime("cpu", "fp32"), tokens, B, T);
  const StepOut gpu = loss_and_grads(cfg, make_runtime("cuda", "fp32"), tokens, B, T);
  EXPECT_NEAR(gpu.losses.total, cpu.losses.total, 1e-5 * std::abs(cpu.losses.total)) << "total loss";
  EXPECT_NEAR(gpu.losses.main, cpu.losses.main, 1e-5 * std::abs(cpu.losses.main)) << "main loss";
  EXPECT_TRUE(grads_close(cfg, gpu.grads, cpu.grads, 1e-4));
}

TEST_P(ModelCuda, Bf16MixedPrecisionTracksCpu) {
  // bf16 moves router scores by ~1e-3, enough to flip a close top-k choice somewhere in a model
  // and move a whole row's gradient: here every token takes every expert, so routing has no
  // choice to make and the comparison measures precision only (the f32 test covers routing).
  ModelConfig cfg = GetParam().cfg;
  if (cfg.ffn == FfnKind::MoE) cfg.num_experts_per_tok = cfg.n_routed_experts;
  const int64_t B = 2, T = 9;
  const Tensor tokens = testing::randint({B, T + 1 + cfg.num_nextn_predict_layers}, static_cast<int32_t>(cfg.vocab_size), 8);
  const StepOut cpu = loss_and_grads(cfg, make_runtime("cpu", "fp32"), tokens, B, T);
  const StepOut gpu = loss_and_grads(cfg, make_runtime("cuda", "bf16"), tokens, B, T);
  // bf16 weights and activations: a few roundings of 2^-8 along each path.
  EXPECT_NEAR(gpu.losses.total, cpu.losses.total, 2e-2 * std::abs(cpu.losses.total)) << "total loss";
  EXPECT_TRUE(grads_close(cfg, gpu.grads, cpu.grads, 5e-2));
}

INSTANTIATE_TEST_SUITE_P(Configs, ModelCuda,
                         ::testing::Values(ModelCase{"mla_moe_mtp", mla_moe_mtp()}, ModelCase{"mha_dense", mha_dense()},
                                           ModelCase{"gqa_moe_softmax", gqa_moe_softmax()}),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- generation: the KV-cache decode (prefill, then one token at a time) ----

// Logits of a prefill of `ids` [1, P] and then of one more token at position P, in f32 on the host.
std::pair<Tensor, Tensor> decode_logits(const ModelConfig& cfg, const Runtime& rt, const std::vector<int32_t>& ids) {
  const std::unique_ptr<Model> model = new_model(cfg, 5, rt);
  const int64_t P = static_cast<int64_t>(ids.size()) - 1, V = cfg.vocab_size;
  Model::KVCache cache = model->new_cache(1, P + 1);
  Arena arena(model->decode_arena_bytes(P), rt.device);
  Tensor prompt = Tensor::empty({1, P}, DType::I32), next = Tensor::empty({1, 1}, DType::I32);
  std::copy(ids.begin(), ids.end() - 1, prompt.data<int32_t>());
  next.data<int32_t>()[0] = ids.back();
  const Tensor logits_prefill = Tensor::empty({P, V}, rt.act, rt.device), logits_next = Tensor::empty({1, V}, rt.act, rt.device);
  model->decode(rt.context(arena, 1, P), rt.upload(prompt), 0, cache, logits_prefill);
  arena.reset();
  model->decode(rt.context(arena, 1, 1), rt.upload(next), P, cache, logits_next);
  return {testing::to_host(logits_prefill), testing::to_host(logits_next)};
}

TEST_P(ModelCuda, DecodeWithTheCacheMatchesCpu) {
  const ModelConfig& cfg = GetParam().cfg;
  const std::vector<int32_t> ids = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3};
  const auto [cpu_prefill, cpu_next] = decode_logits(cfg, make_runtime("cpu", "fp32"), ids);
  const auto [f32_prefill, f32_next] = decode_logits(cfg, make_runtime("cuda", "fp32"), ids);
  EXPECT_TRUE(testing::close(f32_prefill, cpu_prefill, 1e-4, 1e-4)) << "prefill logits, f32";
  EXPECT_TRUE(testing::close(f32_next, cpu_next, 1e-4, 1e-4)) << "next-token logits (through the cache), f32";
  const auto [bf16_prefill, bf16_next] = decode_logits(cfg, make_runtime("cuda", "bf16"), ids);
  // bf16 through every layer: compare at the scale of the logits (a routing flip is possible here).
  double scale = 0, worst = 0;
  for (int64_t i = 0; i < cpu_next.numel(); ++i) {
    scale = std::max(scale, std::abs(static_cast<double>(cpu_next.data<float>()[i])));
    worst = std::max(worst, std::abs(static_cast<double>(bf16_next.data<float>()[i] - cpu_next.data<float>()[i])));
  }
  EXPECT_LT(worst, 0.1 * scale + 1e-2) << "next-token logits, bf16";
}

// ---- training steps ----

// `steps` training steps through the trainer's train_step (forward, backward, clip at 1.0, AdamW,
// bias update; statistics on the device) on a fixed stream of random windows; returns the loss of
// every step (its verdict).
std::vector<double> train_losses(const ModelConfig& cfg, const Runtime& rt, int64_t steps) {
  const int64_t B = 4, T = 12;
  const std::unique_ptr<Model> model = new_model(cfg, 99, rt);
  AdamW optimizer(model->params(), AdamWConfig{});
  Arena arena(size_t{64} << 20, rt.device);
  const Context ctx = rt.context(arena, B, T);
  std::vector<double> losses;
  StepStats stats;  // the trainer's step: statistics on the device, the verdict's loss read back
  for (int64_t step = 0; step < steps; ++step) {
    const Tensor tokens = testing::randint({B, T + 1 + cfg.num_nextn_predict_layers},
                                           static_cast<int32_t>(cfg.vocab_size), 1000 + static_cast<uint64_t>(step));
    train_step(*model, optimizer, ctx, StepConfig{3e-3, 1.0, 1}, [&] { return rt.upload(tokens); }, stats);
    losses.push_back(stats.losses.total);
  }
  return losses;
}

using TrainCuda = testing::GpuTest;

TEST_F(TrainCuda, FiftyStepsTrackTheCpuLosses) {
  const ModelConfig cfg = mla_moe_mtp();
  const std::vector<double> cpu = train_losses(cfg, make_runtime("cpu", "fp32"), 50);
  const std::vector<double> f32 = train_losses(cfg, make_runtime("cuda", "fp32"), 50);
  const std::vector<double> bf16 = train_losses(cfg, make_runtime("cuda", "bf16"), 50);
  EXPECT_LT(cpu.back(), cpu.front()) << "the CPU run must learn for the comparison to mean anything";
  for (size_t i = 0; i < cpu.size(); ++i) {
    // fp32 drifts only by summation order (and a rare routing flip it causes); bf16 by its roundings.
    EXPECT_NEAR(f32[i], cpu[i], 1e-3 * std::abs(cpu[i]) + 1e-3) << "fp32, step " << i + 1;
    EXPECT_NEAR(bf16[i], cpu[i], 5e-2 * std::abs(cpu[i])) << "bf16, step " << i + 1;
  }
  std::printf("step 50 loss: cpu %.5f  cuda fp32 %.5f  cuda bf16 %.5f (step 1: %.5f)\n", cpu.back(), f32.back(),
              bf16.back(), cpu.front());
}

// FP8 training on the GPU (bf16 around FP8 Linear GEMMs: the tile quantisation kernels, cuBLASLt's
// block scaling or the reference FP8 kernel) against the CPU's exact emulation of the same recipe
// (f32 around it): they differ by bf16's roundings and the order of the sums, as bf16 differs from
// fp32 above, and both follow the fp32 losses.
TEST_F(TrainCuda, Fp8FiftyStepsTrackTheCpuEmulation) {
  const ModelConfig cfg = mla_moe_mtp();
  const std::vector<double> cpu32 = train_losses(cfg, make_runtime("cpu", "fp32"), 50);
  const std::vector<double> cpu8 = train_losses(cfg, make_runtime("cpu", "fp8"), 50);
  const std::vector<double> gpu8 = train_losses(cfg, make_runtime("cuda", "fp8"), 50);
  for (size_t i = 0; i < cpu8.size(); ++i) {
    EXPECT_NEAR(gpu8[i], cpu8[i], 5e-2 * std::abs(cpu8[i])) << "step " << i + 1;
    EXPECT_NEAR(cpu8[i], cpu32[i], 5e-2 * std::abs(cpu32[i])) << "step " << i + 1;
  }
  std::printf("step 50 loss: cpu fp32 %.5f  cpu fp8 %.5f  cuda fp8 %.5f\n", cpu32.back(), cpu8.back(), gpu8.back());
}

// Model::update_bias from the same f64 loads (trunk and MTP MoE layers) moves the GPU's biases
// exactly as the CPU's, step after step, and read_bias_ranges reports the same ranges.
TEST_F(TrainCuda, BiasUpdateMatchesCpuExactly) {
  const ModelConfig cfg = mla_moe_mtp();
  const Runtime cpu_rt = make_runtime("cpu", "fp32"), gpu_rt = make_runtime("cuda", "fp32");
  const std::unique_ptr<Model> cpu = new_model(cfg, 7, cpu_rt), gpu = new_model(cfg, 7, gpu_rt);
  Arena cpu_arena(size_t{1} << 20, Device::CPU), gpu_arena(size_t{1} << 20, Device::CUDA);
  const Context cpu_ctx = cpu_rt.context(cpu_arena, 1, 1), gpu_ctx = gpu_rt.context(gpu_arena, 1, 1);
  const size_t layers = cpu->moe_layers().size();
  ASSERT_GE(layers, 2u);
  for (uint64_t step = 0; step < 3; ++step) {
    const int64_t E = cfg.n_routed_experts;
    const Tensor loads = Tensor::empty({static_cast<int64_t>(layers), E}, DType::F64);
    for (size_t i = 0; i < layers; ++i) {
      const Tensor r = testing::randint({E}, 4, 200 + 10 * step + i);  // ties with the mean too
      for (int64_t e = 0; e < E; ++e) loads.data<double>()[static_cast<int64_t>(i) * E + e] = r.data<int32_t>()[e];
    }
    cpu->update_bias(cpu_ctx, loads);
    gpu->update_bias(gpu_ctx, loads.to(Device::CUDA));
  }
  for (const auto& e : cpu->buffers().entries()) {
    const Tensor a = cpu->buffers().param(e.spec.name), b = testing::to_host(gpu->buffers().param(e.spec.name));
    EXPECT_TRUE(testing::close(b, a, 0, 0)) << e.spec.name;
  }
  std::vector<MoEStats> cs(layers), gs(layers);
  cpu->read_bias_ranges(cs);
  gpu->read_bias_ranges(gs);
  for (size_t i = 0; i < layers; ++i) {
    EXPECT_EQ(gs[i].bias_min, cs[i].bias_min) << "layer " << i;
    EXPECT_EQ(gs[i].bias_max, cs[i].bias_max) << "layer " << i;
    EXPECT_LT(cs[i].bias_min, cs[i].bias_max) << "the biases must have moved apart";
  }
}

TEST_F(TrainCuda, SameSeedGivesIdenticalLosses) {
  const ModelConfig cfg = gqa_moe_softmax();
  const Runtime rt = make_runtime("cuda", "bf16");
  const std::vector<double> a = train_losses(cfg, rt, 10), b = train_losses(cfg, rt, 10);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << "step " << i + 1;
}

}  // namespace
}  // namespace moelab
