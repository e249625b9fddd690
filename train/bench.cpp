#include "train/bench.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "core/device.h"
#include "core/nn/model.h"
#include "core/ops/attention.h"
#include "core/ops/bf16_matmul.h"
#include "core/ops/matmul.h"
#include "core/rng.h"
#include "train/model_info.h"
#include "train/optimizer.h"
#include "train/parallel.h"
#include "train/runtime.h"
#include "train/step.h"

namespace moelab {

namespace {
// The phase timeline of core/profile.h for one step at a time: the clock (CPU) or a CUDA event
// (GPU) at every phase change; after the step, each interval is added to the phase it began in.
class StepTimeline final : public Profiler {
 public:
  explicit StepTimeline(bool cuda) : cuda_(cuda) {}
  void begin_step() {
    marks_.clear();
    mark(current());
  }
  // Ends the step (the GPU work queued so far must be finished: the caller synchronises after this
  // call records its last mark) and adds its intervals to ms.
  void end_step(std::array<double, kNumPhases>& ms, const Runtime& rt) {
    mark(current());
    rt.synchronize();
    for (size_t i = 0; i + 1 < marks_.size(); ++i) ms[static_cast<size_t>(marks_[i].phase)] += elapsed_ms(i);
  }

 protected:
  void mark(Phase now) override {
    if (cuda_) {
      if (marks_.size() == events_.size()) events_.emplace_back();
      events_[marks_.size()].record();
    }
    marks_.push_back(Mark{now, std::chrono::steady_clock::now()});
  }

 private:
  struct Mark {
    Phase phase;
    std::chrono::steady_clock::time_point t;
  };
  double elapsed_ms(size_t i) const {
    if (cuda_) return events_[i + 1].ms_since(events_[i]);
    return std::chrono::duration<double, std::milli>(marks_[i + 1].t - marks_[i].t).count();
  }

  bool cuda_;
  std::vector<Mark> marks_;
  std::vector<CudaEvent> events_;  // CUDA: one per mark, reused every step
};

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

// The timed steps; `distributed`: this process with the others (its share of the batch and the
// data-parallel reduction), else alone on the whole batch.
BenchResult bench_steps(const ModelConfig& cfg, const BenchOptions& opt, bool distributed) {
  if (distributed) pick_device(opt.dist, opt.device);
  const Runtime rt = make_runtime(opt.device, opt.precision);
  const std::unique_ptr<Model> model_ptr = new_model(cfg, opt.seed, rt);
  Model& model = *model_ptr;
  const Processes procs =
      distributed ? join_processes(opt.dist, rt.device, model) : Processes{};
  const int64_t batch = per_rank_batch(opt.batch_size, procs.size(), "batch_size");
  AdamW optimizer(model.params(), AdamWConfig{}, procs.owned());
  const ModelInfo info = model_info(model, batch, opt.seq_len, rt.act);
  if (procs.host) procs.host->barrier();  // every process measures its GEMM at the same time
  const double gemm_gflops = measured_gemm_gflops(rt) * procs.size();  // before the arena takes the GPU's memory
  Arena arena(rt.arena_bytes(info.activation_bytes()), rt.device);
  Context ctx = rt.context(arena, batch, opt.seq_len);
  StepTimeline timeline(rt.device == Device::CUDA);
  ctx.profiler = &timeline;
  std::array<double, kNumPhases> phase_total{};

  BenchResult r;
  r.cuda = rt.device == Device::CUDA;
  r.params = model.params().numel();
  r.threads = omp_get_max_threads();
  r.runtime = rt.describe();
  if (rt.cpu_bf16) r.runtime += ", bf16 GEMMs: " + bf16_matmul_path();
  r.gemm_gflops = gemm_gflops;
  r.ranks = procs.size();
  r.rank = procs.world.rank;
  double total_ms = 0, min_ms = 1e300;
  DeviceCounters counted{};  // over the timed steps' train_step calls
  dist::CommCounters comm_before, ep_before;  // at the first timed step
  dist::EPTraffic traffic_before;
  // The trainer's step with the bench's fixed choices: one micro-batch, lr opt.lr, clipping at 1.0.
  const StepConfig step_cfg{opt.lr, 1.0, 1};
  StepStats stats;  // its device buffer lives across the steps
  for (int64_t step = 0; step < opt.warmup + opt.steps; ++step) {
    // The global batch's rows of this process, made outside the timed region.
    const int64_t first = procs.world.rank * batch;
    const Tensor tokens = rt.upload(random_tokens(cfg, opt, step).slice(first, first + batch));
    rt.synchronize();
    if (procs.dp && step == opt.warmup) comm_before = procs.dp->comm().counters();
    if (procs.ep_group && step == opt.warmup) {
      ep_before = procs.ep_group->counters();
      traffic_before = procs.ep->traffic();
    }
    const DeviceCounters before = device_counters();
    const auto t0 = std::chrono::steady_clock::now();
    timeline.begin_step();
    train_step(model, optimizer, ctx, step_cfg, [&] { return tokens; }, stats, procs.sync());
    const DeviceCounters after = device_counters();  // before the timeline's own synchronisation
    if (step >= opt.warmup) {
      counted.device_allocations += after.device_allocations - before.device_allocations;
      counted.host_syncs += after.host_syncs - before.host_syncs;
    }
    std::array<double, kNumPhases> step_phases{};
    timeline.end_step(step_phases, rt);  // synchronises
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (step >= opt.warmup)
      for (int p = 0; p < kNumPhases; ++p) phase_total[static_cast<size_t>(p)] += step_phases[static_cast<size_t>(p)];
    if (step == 0) r.first_loss = stats.losses.total;
    r.last_loss = stats.losses.total;
    if (step >= opt.warmup) {
      total_ms += ms;
      min_ms = std::min(min_ms, ms);
    }
  }
  if (procs.ep_group) {
    const dist::CommCounters c = procs.ep_group->counters();
    const double n = static_cast<double>(opt.steps);
    for (int k = 0; k < 2; ++k) r.ep_bytes_per_step[k] = static_cast<double>(c.bytes[k] - ep_before.bytes[k]) / n;
    r.ep_ms_per_step = 1e3 * (c.busy_s - ep_before.busy_s) / n;
    r.ep_arrival_ms_per_step = 1e3 * (c.arrival_s - ep_before.arrival_s) / n;
    r.ep_modeled_ms_per_step = 1e3 * (c.modeled_s - ep_before.modeled_s) / n;
    r.ep_exposed_ms_per_step = 1e3 * (c.waited_s - ep_before.waited_s) / n;
    const dist::EPTraffic t = procs.ep->traffic();
    for (int k = 0; k < 2; ++k)
      r.ep_dispatch_bytes_per_step[k] = static_cast<double>(t.dispatch_bytes[k] - traffic_before.dispatch_bytes[k]) / n;
    r.ep_nodes_per_token = static_cast<double>(t.token_nodes - traffic_before.token_nodes) /
                           static_cast<double>(std::max<int64_t>(1, t.tokens - traffic_before.tokens));
  }
  if (procs.dp) {
    const dist::CommCounters c = procs.dp->comm().counters();
    const double n = static_cast<double>(opt.steps);
    for (int k = 0; k < 2; ++k) r.comm_bytes_per_step[k] = static_cast<double>(c.bytes[k] - comm_before.bytes[k]) / n;
    r.comm_ms_per_step = 1e3 * (c.busy_s - comm_before.busy_s) / n;
    r.modeled_ms_per_step = 1e3 * (c.modeled_s - comm_before.modeled_s) / n;
    r.exposed_ms_per_step = 1e3 * (c.waited_s - comm_before.waited_s) / n;
    r.arrival_ms_per_step = 1e3 * (c.arrival_s - comm_before.arrival_s) / n;
    char head[128];
    std::snprintf(head, sizeof head, "%s, zero %lld, %lld buckets of %g MB", procs.dp->comm().backend(),
                  static_cast<long long>(opt.dist.zero), static_cast<long long>(procs.dp->num_buckets()),
                  opt.dist.bucket_mb);
    r.dist = head;
    const dist::LinkModel& link = procs.dp->comm().options().link;
    if (link.emulated()) {
      char buf[160];
      const bool explicit_link = opt.dist.intra_gbps > 0 || opt.dist.inter_gbps > 0;
      const std::string name = !explicit_link ? "'" + opt.dist.link + "'"
                               : opt.dist.link == "none" ? std::string("(explicit)")
                                                         : "'" + opt.dist.link + "' + explicit";
      std::snprintf(buf, sizeof buf, ", emulated link %s: intra %.1f GB/s %.1f us, inter %.1f GB/s %.1f us",
                    name.c_str(), link.intra.gbytes_per_s, link.intra.latency_us, link.inter.gbytes_per_s,
                    link.inter.latency_us);
      r.dist += buf;
    }
  }
  r.ms_per_step = total_ms / static_cast<double>(opt.steps);
  r.ms_per_step_min = min_ms;
  r.tokens_per_second = static_cast<double>(opt.batch_size * opt.seq_len) / (r.ms_per_step / 1000.0);  // global
  r.arena_peak_bytes = arena.peak();
  r.model_gflops = r.tokens_per_second * info.flops_per_token / 1e9;
  const double tokens = static_cast<double>(opt.batch_size * opt.seq_len);
  r.attention_flops = info.flops_attention * tokens;
  r.expert_flops = 6.0 * static_cast<double>(info.routed_experts.active + info.mtp_routed_experts.active) * tokens;
  for (int p = 0; p < kNumPhases; ++p)
    r.phase_ms[static_cast<size_t>(p)] = phase_total[static_cast<size_t>(p)] / static_cast<double>(opt.steps);
  r.device_allocations_per_step = static_cast<double>(counted.device_allocations) / static_cast<double>(opt.steps);
  r.host_syncs_per_step = static_cast<double>(counted.host_syncs) / static_cast<double>(opt.steps);
  if (r.cuda) r.device_memory_bytes = static_cast<double>(cuda_total_memory() - cuda_free_memory());
  return r;
}
}  // namespace

BenchResult run_bench(const ModelConfig& cfg, const BenchOptions& opt) {
  MOELAB_CHECK(opt.batch_size > 0 && opt.seq_len > 0 && opt.steps > 0 && opt.warmup >= 0, "bench: batch_size ",
               opt.batch_size, ", seq_len ", opt.seq_len, ", steps ", opt.steps, " must be > 0 (warmup ", opt.warmup,
               " >= 0)");
  BenchResult r = bench_steps(cfg, opt, dist::world_from_environment().size > 1);
  r.baseline_tokens_per_second = opt.baseline_tokens_per_s;
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
  // The best of at least 8 runs and 0.5 s: the first runs warm the caches, the thread pool and
  // cuBLASLt's plan, and on a shared machine a few runs alone can all be slowed.
  double best = 1e300, total = 0;
  for (int run = 0; run < 8 || total < 0.5; ++run) {
    rt.synchronize();
    const auto t0 = std::chrono::steady_clock::now();
    if (rt.cpu_bf16) bf16_matmul_forward(rt.exec(), a, b, c);  // the GEMMs the step's Linears run
    else matmul_forward(rt.exec(), a, b, c);
    rt.synchronize();
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, t);
    total += t;
  }
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / best / 1e9;
}

std::string format_bench(const BenchResult& r, const BenchOptions& opt) {
  char buf[1024];
  std::string out;
  std::snprintf(buf, sizeof buf,
                "moelab tokens/s: %.0f  ms/step: %.2f (min %.2f)\n"
                "%s, %d threads, batch %lld x seq %lld, %lld timed steps after %lld warm-up, %lld params, "
                "activation arena peak %.1f MiB, loss %.4f -> %.4f\n"
                "model %.1f GFLOP/s = MFU %.1f%% of the %.0f GFLOP/s GEMM measured in this run",
                r.tokens_per_second, r.ms_per_step, r.ms_per_step_min, r.runtime.c_str(), r.threads,
                static_cast<long long>(opt.batch_size), static_cast<long long>(opt.seq_len),
                static_cast<long long>(opt.steps), static_cast<long long>(opt.warmup),
                static_cast<long long>(r.params), static_cast<double>(r.arena_peak_bytes) / (1 << 20), r.first_loss,
                r.last_loss, r.model_gflops, 100.0 * r.model_gflops / r.gemm_gflops, r.gemm_gflops);
  out += buf;
  if (r.ranks > 1) {
    std::snprintf(buf, sizeof buf, "\ndata parallel: %d processes (%s): %.0f tokens/s in total, %.0f per process",
                  r.ranks, r.dist.c_str(), r.tokens_per_second, r.tokens_per_second / r.ranks);
    out += buf;
    if (r.baseline_tokens_per_second > 0) {
      std::snprintf(buf, sizeof buf, "\n  scaling: %d processes x %d threads reach %.1f%% of the one-process %.0f tokens/s given",
                    r.ranks, r.threads, 100.0 * r.tokens_per_second / r.baseline_tokens_per_second,
                    r.baseline_tokens_per_second);
      out += buf;
    }
    const double busy = r.comm_ms_per_step, exposed = r.exposed_ms_per_step;
    std::snprintf(buf, sizeof buf,
                  "\n  communication per step and process: %s sent (intra-node %s, inter-node %s), %.2f ms busy "
                  "(%.2f ms of it waiting for the slowest process; link model %.2f ms), %.2f ms exposed = %.1f%% of "
                  "the step (%.0f%% hidden)",
                  dist::human_bytes(r.comm_bytes_per_step[0] + r.comm_bytes_per_step[1]).c_str(),
                  dist::human_bytes(r.comm_bytes_per_step[0]).c_str(), dist::human_bytes(r.comm_bytes_per_step[1]).c_str(),
                  busy, r.arrival_ms_per_step, r.modeled_ms_per_step, exposed, 100.0 * exposed / r.ms_per_step,
                  busy > 0 ? 100.0 * std::max(0.0, 1.0 - exposed / busy) : 0.0);
    out += buf;
    if (r.ep_ms_per_step > 0) {
      std::snprintf(buf, sizeof buf,
                    "\n  expert all-to-alls per step and process: %s sent (intra-node %s, inter-node %s), %.2f ms "
                    "busy (%.2f ms of it waiting for the slowest process; link model %.2f ms); exposed %.2f ms = %.1f%% of the step",
                    dist::human_bytes(r.ep_bytes_per_step[0] + r.ep_bytes_per_step[1]).c_str(),
                    dist::human_bytes(r.ep_bytes_per_step[0]).c_str(), dist::human_bytes(r.ep_bytes_per_step[1]).c_str(),
                    r.ep_ms_per_step, r.ep_arrival_ms_per_step, r.ep_modeled_ms_per_step, r.ep_exposed_ms_per_step,
                    100.0 * r.ep_exposed_ms_per_step / r.ms_per_step);
      out += buf;
      std::snprintf(buf, sizeof buf, "\n    of them the dispatches: %s (intra-node %s, inter-node %s); %.2f nodes per token",
                    dist::human_bytes(r.ep_dispatch_bytes_per_step[0] + r.ep_dispatch_bytes_per_step[1]).c_str(),
                    dist::human_bytes(r.ep_dispatch_bytes_per_step[0]).c_str(),
                    dist::human_bytes(r.ep_dispatch_bytes_per_step[1]).c_str(), r.ep_nodes_per_token);
      out += buf;
    }
  }
  if (r.cuda) {
    std::snprintf(buf, sizeof buf, "; %.1f%% of the H100 SXM's %.0f TFLOP/s bf16 dense peak; GPU memory in use %.0f MiB",
                  100.0 * r.model_gflops / (kH100Bf16DenseTflops * 1e3), kH100Bf16DenseTflops,
                  r.device_memory_bytes / (1 << 20));
    out += buf;
    std::snprintf(buf, sizeof buf, "\nper step: %.1f device allocations, %.1f host waits for the GPU",
                  r.device_allocations_per_step, r.host_syncs_per_step);
    out += buf;
  }
  out += "\nphase               ms/step      %\n";
  double total = 0;
  for (double ms : r.phase_ms) total += ms;
  for (int p = 0; p < kNumPhases; ++p) {
    const double ms = r.phase_ms[static_cast<size_t>(p)];
    std::snprintf(buf, sizeof buf, "  %-17s %9.3f %6.1f\n", phase_name(static_cast<Phase>(p)), ms,
                  total > 0 ? 100.0 * ms / total : 0.0);
    out += buf;
  }
  // TFLOP/s of a phase from its FLOPs per step and its ms per step, and the share of the GEMM rate.
  auto rate = [&](const char* what, double flops, Phase p) {
    const double ms = r.phase_ms[static_cast<size_t>(p)];
    if (flops <= 0 || ms <= 0) return;
    const double gflops = flops / (ms * 1e6);
    std::snprintf(buf, sizeof buf, "%s: %.1f GFLOP/s = %.1f%% of the measured GEMM\n", what, gflops,
                  100.0 * gflops / r.gemm_gflops);
    out += buf;
  };
  rate("attention (causal, fwd + bwd)", r.attention_flops, Phase::Attention);
  rate("expert GEMMs (routed, fwd + bwd)", r.expert_flops, Phase::ExpertGemm);
  return out;
}

AttentionBenchResult run_attention_bench(const ModelConfig& cfg, const BenchOptions& opt) {
  MOELAB_CHECK(opt.batch_size > 0 && opt.seq_len > 0 && opt.steps > 0 && opt.warmup >= 0, "bench --kernel attention: "
               "batch_size ", opt.batch_size, ", seq_len ", opt.seq_len, ", steps ", opt.steps, " must be > 0");
  const Runtime rt = make_runtime(opt.device, opt.precision);
  AttentionBenchResult r;
  r.runtime = rt.describe();
  r.B = opt.batch_size;
  r.T = opt.seq_len;
  // One block's attention layer says its score shapes and FLOPs (core/nn/cost.h); declared, not allocated.
  ParamBuffer declared, declared_buffers;
  const Block block(declared, declared_buffers, "model.layers.0", cfg, /*moe=*/false);
  const AttentionDims dims = block.attention_dims();
  r.H = dims.heads;
  r.Hkv = dims.kv_heads;
  r.Dqk = dims.qk_dim;
  r.Dv = dims.v_dim;
  r.flops = block.attention_cost({r.B, r.T, rt.act}).flops(Phase::Attention) * static_cast<double>(r.B * r.T);
  // Random inputs made on the CPU (Philox), rounded to the activation dtype, then moved.
  uint64_t seed = opt.seed;
  auto random = [&](const Shape& shape) {
    Tensor t = Tensor::empty(shape, DType::F32);
    fill_normal(t, seed++, 0, 0.0, 1.0);
    return rt.upload(rt.act == DType::F32 ? t : t.to(rt.act));
  };
  const Tensor q = random({r.B, r.T, r.H, r.Dqk}), k = random({r.B, r.T, r.Hkv, r.Dqk});
  const Tensor v = random({r.B, r.T, r.Hkv, r.Dv}), grad_out = random({r.B, r.T, r.H, r.Dv});
  const Tensor out = Tensor::empty(grad_out.shape(), rt.act, rt.device);
  const Tensor lse = Tensor::empty({r.B, r.H, r.T}, DType::F32, rt.device);
  const Tensor gq = Tensor::empty(q.shape(), rt.act, rt.device), gk = Tensor::empty(k.shape(), rt.act, rt.device);
  const Tensor gv = Tensor::empty(v.shape(), rt.act, rt.device);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(r.Dqk)));
  using Clock = std::chrono::steady_clock;
  auto ms_since = [](Clock::time_point t) { return std::chrono::duration<double, std::milli>(Clock::now() - t).count(); };
  for (int64_t step = 0; step < opt.warmup + opt.steps; ++step) {
    rt.synchronize();
    auto t0 = Clock::now();
    attention_forward(rt.exec(), q, k, v, scale, out, lse);
    rt.synchronize();
    const double fwd = ms_since(t0);
    t0 = Clock::now();
    attention_backward(rt.exec(), grad_out, q, k, v, out, lse, scale, gq, gk, gv);
    rt.synchronize();
    const double bwd = ms_since(t0);
    if (step >= opt.warmup) {
      r.forward_ms += fwd / static_cast<double>(opt.steps);
      r.backward_ms += bwd / static_cast<double>(opt.steps);
    }
  }
  return r;
}

std::string format_attention_bench(const AttentionBenchResult& r) {
  char buf[512];
  const double ms = r.forward_ms + r.backward_ms;
  std::snprintf(buf, sizeof buf,
                "moelab attention ms: %.3f (forward %.3f, backward %.3f)  GFLOP/s: %.1f\n"
                "%s, B %lld T %lld H %lld Hkv %lld Dqk %lld Dv %lld, causal, %.3f GFLOP per forward + backward\n",
                ms, r.forward_ms, r.backward_ms, r.flops / (ms * 1e6), r.runtime.c_str(), static_cast<long long>(r.B),
                static_cast<long long>(r.T), static_cast<long long>(r.H), static_cast<long long>(r.Hkv),
                static_cast<long long>(r.Dqk), static_cast<long long>(r.Dv), r.flops / 1e9);
  return buf;
}

}  // namespace moelab
