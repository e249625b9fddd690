#include "train/bench.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/nn/model.h"
#include "core/ops/grad_norm.h"
#include "core/ops/matmul.h"
#include "core/rng.h"
#include "train/model_info.h"
#include "train/optimizer.h"
#include "train/runtime.h"

namespace moelab {

namespace {
// Uniform random token windows [B, T + 1 + D_mtp] from the Philox stream (fresh per step).
Tensor random_tokens(const ModelConfig& cfg, const BenchOptions& opt, int64_t step) {
  const int64_t width = opt.seq_len + 1 + cfg.num_nextn_predict_layers;
  Tensor u = Tensor::empty({opt.batch_size, width}, DType::F32);
  fill_uniform(u, opt.seed + 1, static_cast<uint64_t>(step * opt.batch_size * width), 0.0f, 1.0f);
  Tensor ids = Tensor::empty(u.shape(), DType::I32);
  for (int64_t i = 0; i < u.numel(); ++i)
    ids.data<int32_t>()[i] = std::min<int32_t>(static_cast<int32_t>(cfg.vocab_size - 1),
                                               static_cast<int32_t>(u.data<float>()[i] * cfg.vocab_size));
  return ids;
}
}  // namespace

BenchResult run_bench(const ModelConfig& cfg, const BenchOptions& opt) {
  MOELAB_CHECK(opt.batch_size > 0 && opt.seq_len > 0 && opt.steps > 0 && opt.warmup >= 0, "bench: batch_size ",
               opt.batch_size, ", seq_len ", opt.seq_len, ", steps ", opt.steps, " must be > 0 (warmup ", opt.warmup,
               " >= 0)");
  const Runtime rt = make_runtime(opt.device, opt.precision);
  const std::unique_ptr<Model> model_ptr = new_model(cfg, opt.seed, rt);
  Model& model = *model_ptr;
  AdamW optimizer(model.params(), AdamWConfig{});
  const ModelInfo info = model_info(model, opt.batch_size, opt.seq_len);
  Arena arena(rt.arena_bytes(info.activation_bytes()), rt.device);
  const Context ctx = rt.context(arena, opt.batch_size, opt.seq_len);

  BenchResult r;
  r.params = model.params().numel();
  r.threads = omp_get_max_threads();
  r.runtime = rt.describe();
  r.gemm_gflops = measured_gemm_gflops(rt);
  double total_ms = 0, min_ms = 1e300;
  for (int64_t step = 0; step < opt.warmup + opt.steps; ++step) {
    const Tensor tokens = rt.upload(random_tokens(cfg, opt, step));  // made outside the timed region
    rt.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    arena.reset();
    Model::Saved saved;
    const Model::Losses losses = model.forward(ctx, tokens, saved);
    model.params().zero_grads();
    model.backward(ctx, saved);
    clip_grad_norm({model.params().flat_grads()}, 1.0);
    optimizer.step(opt.lr);
    std::vector<std::vector<double>> loads;
    for (const MoEStats& st : model.moe_stats(saved)) loads.push_back(st.load);
    model.update_bias(loads);
    rt.synchronize();
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (step == 0) r.first_loss = losses.total;
    r.last_loss = losses.total;
    if (step >= opt.warmup) {
      total_ms += ms;
      min_ms = std::min(min_ms, ms);
    }
  }
  r.ms_per_step = total_ms / static_cast<double>(opt.steps);
  r.ms_per_step_min = min_ms;
  r.tokens_per_second = static_cast<double>(opt.batch_size * opt.seq_len) / (r.ms_per_step / 1000.0);
  r.arena_peak_bytes = arena.peak();
  r.model_gflops = r.tokens_per_second * info.flops_per_token / 1e9;
  return r;
}

double measured_gemm_gflops(const Runtime& rt, int64_t n) {
  if (n == 0) n = rt.device == Device::CPU ? 512 : 8192;
  Tensor a = Tensor::empty({n, n}, DType::F32), b = Tensor::empty({n, n}, DType::F32);
  fill_uniform(a, 1, 0, -1.0f, 1.0f);
  fill_uniform(b, 2, 0, -1.0f, 1.0f);
  if (rt.act != DType::F32) {
    a = a.to(rt.act);
    b = b.to(rt.act);
  }
  a = rt.upload(a);
  b = rt.upload(b);
  const Tensor c = Tensor::empty({n, n}, rt.act, rt.device);
  double best = 1e300;
  for (int run = 0; run < 4; ++run) {  // the first run warms the caches, the thread pool, cuBLASLt's plan
    rt.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    matmul_forward(a, b, c, rt.gpu.get());
    rt.synchronize();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / best / 1e9;
}

std::string format_bench(const BenchResult& r, const BenchOptions& opt) {
  char buf[1024];
  std::snprintf(buf, sizeof buf,
                "moelab tokens/s: %.0f  ms/step: %.2f (min %.2f)\n"
                "%s, %d threads, batch %lld x seq %lld, %lld timed steps after %lld warm-up, %lld params, "
                "activation arena peak %.1f MiB, loss %.4f -> %.4f\n"
                "model %.1f GFLOP/s = %.1f%% of the %.0f GFLOP/s GEMM measured in this run\n",
                r.tokens_per_second, r.ms_per_step, r.ms_per_step_min, r.runtime.c_str(), r.threads,
                static_cast<long long>(opt.batch_size), static_cast<long long>(opt.seq_len),
                static_cast<long long>(opt.steps), static_cast<long long>(opt.warmup),
                static_cast<long long>(r.params), static_cast<double>(r.arena_peak_bytes) / (1 << 20), r.first_loss,
                r.last_loss, r.model_gflops, 100.0 * r.model_gflops / r.gemm_gflops, r.gemm_gflops);
  return buf;
}

}  // namespace moelab
