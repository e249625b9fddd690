// `moelab bench`: times full training steps (forward, backward, gradient clipping, AdamW, the
// aux-loss-free bias update) of a model on random tokens, after a few warm-up steps. A benchmark
// command, never a test: the numbers go into examples/BENCHMARKS.md next to the peer's
// (tests/reference/bench_torch.py on the same config and thread count).
#pragma once

#include <cstdint>
#include <string>

#include "core/nn/config.h"
#include "core/tensor.h"

namespace moelab {

struct BenchOptions {
  int64_t batch_size = 8;
  int64_t seq_len = 128;
  int64_t steps = 10;         // timed steps
  int64_t warmup = 2;         // untimed steps first
  uint64_t seed = 1;
  double lr = 1e-3;
  std::string device = "cpu";           // cpu | cuda (train/runtime.h)
  std::string precision = "auto";       // auto | fp32 | bf16
};

struct BenchResult {
  double tokens_per_second = 0;
  double ms_per_step = 0;       // mean over the timed steps
  double ms_per_step_min = 0;
  double first_loss = 0, last_loss = 0;
  size_t arena_peak_bytes = 0;
  int64_t params = 0;
  int threads = 0;
  std::string runtime;          // Runtime::describe()
  double gemm_gflops = 0;       // the GEMM rate measured in the same run (MFU's denominator)
  double model_gflops = 0;      // training FLOPs per second (train/model_info.h's count)
};

BenchResult run_bench(const ModelConfig& cfg, const BenchOptions& opt);

struct Runtime;
// The GEMM rate this machine reaches through moelab's own matmul_forward in the runtime's
// precision (a square n^3 product, best of a few runs; n = 0 picks 512 on the CPU, 8192 on CUDA),
// in GFLOP/s: the measured "peak" that MFU is reported against (MODEL.md, "Counting for MFU").
double measured_gemm_gflops(const Runtime& rt, int64_t n = 0);
std::string format_bench(const BenchResult& r, const BenchOptions& opt);

}  // namespace moelab
