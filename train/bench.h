// `moelab bench`: times full training steps (train/step.h's train_step, the trainer's own: forward,
// backward, gradient norm and clipping at 1.0, AdamW, the aux-loss-free bias update; one
// micro-batch) of a model on random tokens, after a few warm-up steps, on the CPU or the GPU
// (--device, --precision: train/runtime.h). Reports tokens/s, ms per step and per phase
// (core/profile.h: attention, router, permute/combine, expert GEMMs, dense GEMMs,
// norms/elementwise, loss, optimizer = norm, clipping, AdamW and bias update; on the GPU timed with
// CUDA events between phase changes), the model's FLOP rate (train/model_info.h's count) as MFU
// against a GEMM measured in the same run and, on CUDA, against the H100 SXM's 989 TFLOP/s bf16
// dense peak, and the memory used. A benchmark command, never a test: the numbers go into
// examples/BENCHMARKS.md next to the peers' (tests/reference/bench_torch.py on the same config;
// scripts/gpu_bench.sh runs both on the GPU).
// Several processes (`mpirun -np N moelab bench`, train/parallel.h): batch_size is the global batch,
// each process steps on its share with the data-parallel reduction; the report adds tokens/s in
// total and per process, the bytes each process sends per step, the communication thread's busy
// time and the part of it the step waited for (exposed), and with baseline_tokens_per_s (one
// process's figure on the same machine, from `moelab bench` alone) the scaling efficiency. (Timing
// that one process inside the same mpirun, the others waiting, measured 10-40% low here: the
// waiting processes disturb it, so the baseline is a separate command.)
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "core/nn/config.h"
#include "core/profile.h"
#include "core/tensor.h"
#include "train/run_config.h"

namespace moelab {

struct BenchOptions {
  int64_t batch_size = 8;
  int64_t seq_len = 128;
  int64_t steps = 10;         // timed steps
  int64_t warmup = 2;         // untimed steps first
  uint64_t seed = 1;
  double lr = 1e-3;
  std::string device = "cpu";           // cpu | cuda (train/runtime.h)
  std::string precision = "auto";       // auto | fp32 | bf16 | fp8 | fp8_pow2
  DistConfig dist;                      // several processes: backend, ZeRO, buckets, emulated links
  double baseline_tokens_per_s = 0;     // several processes: one process's tokens/s, for the efficiency
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
  std::array<double, kNumPhases> phase_ms{};  // mean ms per timed step in each phase
  // FLOPs per step of the phases with a clean count (train/model_info.h): attention (causal half,
  // forward + backward) and the routed experts' GEMMs (6 x active routed-expert parameters per
  // token): their rates against the measured GEMM say how close the two kernels that are not
  // plain dense GEMMs come to the dense rate (a grouped expert GEMM should reach most of it).
  double attention_flops = 0, expert_flops = 0;
  double device_memory_bytes = 0;  // CUDA: memory in use on the device at the end (all of moelab's)
  // CUDA, per timed step of train_step (core/device.h's counters): cudaMalloc calls (the steady state
  // should make none) and the times the host waited for the device (each one stalls the queue).
  double device_allocations_per_step = 0, host_syncs_per_step = 0;
  bool cuda = false;
  // Several processes: the count, this one's rank, its group's description, and per timed step the
  // bytes it sent (intra-node, inter-node), the communication thread's busy time (held time of an
  // emulated link included), the link model's time, and the time the step waited (exposed).
  int ranks = 1, rank = 0;
  std::string dist;
  double comm_bytes_per_step[2] = {0, 0};
  double comm_ms_per_step = 0, modeled_ms_per_step = 0, exposed_ms_per_step = 0;
  double arrival_ms_per_step = 0;  // of comm_ms: waiting for the slowest process to arrive (imbalance)
  // dist.ep > 1: the expert all-to-alls of this process's group per step (layout, dispatch,
  // combine and their backward, every MoE layer): bytes sent, the communication thread's time in
  // them (of it waiting for the slowest process), and the time the step waited for them (exposed:
  // with dist.overlap the rest ran while the other half of the tokens computed).
  double ep_bytes_per_step[2] = {0, 0};
  double ep_ms_per_step = 0, ep_arrival_ms_per_step = 0, ep_modeled_ms_per_step = 0, ep_exposed_ms_per_step = 0;
  double ep_dispatch_bytes_per_step[2] = {0, 0};  // of ep_bytes: the dispatches' rows (the wire dtype)
  double ep_nodes_per_token = 0;                  // the mean number of nodes a token's experts live on
  double baseline_tokens_per_second = 0;  // BenchOptions::baseline_tokens_per_s
};

// H100 SXM dense bf16 peak (NVIDIA's datasheet, without sparsity): the MFU reference the GPU peers
// (PaLM's MFU, torchtitan, Megatron) report against, so moelab's MFU compares with theirs.
constexpr double kH100Bf16DenseTflops = 989.0;

BenchResult run_bench(const ModelConfig& cfg, const BenchOptions& opt);

struct Runtime;
// The GEMM rate this machine reaches through moelab's own GEMM in the runtime's precision
// (matmul_forward, or bf16_matmul_forward in the CPU's bf16 mode; a square n^3 product, best of at
// least 8 runs and 0.5 s; n = 0 picks 512 on the CPU, 8192 on CUDA), in GFLOP/s: the measured
// "peak" that MFU is reported against (MODEL.md, "Counting for MFU").
double measured_gemm_gflops(const Runtime& rt, int64_t n = 0);
std::string format_bench(const BenchResult& r, const BenchOptions& opt);

// `moelab bench --kernel attention`: one layer's causal attention alone (forward, then backward),
// on the config's shapes (MLA: H heads of Dqk = Dn + Dr and Dv; MHA/GQA: head_dim, Hkv), with
// random q, k, v in the runtime's activation dtype: the peer of PyTorch's
// scaled_dot_product_attention on the same shapes (tests/reference/bench_torch.py --kernel
// attention). GFLOP/s counts the causal half, forward + backward (train/model_info.h).
struct AttentionBenchResult {
  std::string runtime;
  int64_t B = 0, T = 0, H = 0, Hkv = 0, Dqk = 0, Dv = 0;
  double forward_ms = 0, backward_ms = 0;  // means over the timed steps
  double flops = 0;                        // per forward + backward
};
AttentionBenchResult run_attention_bench(const ModelConfig& cfg, const BenchOptions& opt);
std::string format_attention_bench(const AttentionBenchResult& r);

}  // namespace moelab
