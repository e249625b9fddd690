// The step's statistics on the device (core/ops/step_stats.h): the reference's arithmetic, in its
// order, in double. The kernel is one block: thread 0 combines the heads' means and the balance
// losses (a few dozen operations) while the block copies the loads.
#include <cuda_runtime.h>

#include "cuda/check.h"
#include "cuda/step_stats.h"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 256;

// The entries of core/ops/cross_entropy.h's stats and of a MoE layer's (core/ops/step_stats.h).
constexpr int kLossSum = 0, kValid = 1, kBadRow = 2, kBadTarget = 3;
constexpr int kMoeStats = 3;

__device__ double head_mean(const double* ce) { return ce[kValid] > 0.0 ? ce[kLossSum] / ce[kValid] : 0.0; }

__global__ void step_stats_accumulate_kernel(StepStatsAccumulateParams p) {
  const int64_t H = p.num_heads, L = p.moe_layers, E = p.experts;
  // The layout of core/ops/step_stats.h (StepStatsLayout).
  const int64_t main = 4, seq_aux = 4 + H, load = seq_aux + 3, last_load = load + L * E;
  double* acc = p.acc;
  if (threadIdx.x == 0) {
    const double m = head_mean(p.heads[0]);
    double total = m;
    for (int64_t k = 1; k < H; ++k) total += p.mtp_weight * head_mean(p.heads[k]);
    double s = 0.0, a = 0.0, z = 0.0;
    for (int64_t l = 0; l < L; ++l) {
      s += p.moe[l][0];
      a += p.moe[l][1];
      z += p.moe[l][2];
    }
    total += s + a + z;
    acc[3] += total * p.scale;
    acc[main] += m * p.scale;
    for (int64_t k = 1; k < H; ++k) acc[main + k] += head_mean(p.heads[k]) * p.scale;
    acc[seq_aux] += s * p.scale;
    acc[seq_aux + 1] += a * p.scale;
    acc[seq_aux + 2] += z * p.scale;
    for (int64_t k = 0; k < H && acc[0] == 0.0; ++k)
      if (p.heads[k][kBadRow] >= 0.0) {
        acc[0] = static_cast<double>(k + 1);
        acc[1] = p.heads[k][kBadRow];
        acc[2] = p.heads[k][kBadTarget];
      }
  }
  for (int64_t i = threadIdx.x; i < L * E; i += blockDim.x) {
    const double count = p.moe[i / E][kMoeStats + i % E];
    acc[load + i] += count;
    acc[last_load + i] = count;
  }
}

}  // namespace

void step_stats_reset(const StepStatsResetParams& p) {
  if (p.size > 0) CUDA_CHECK(cudaMemsetAsync(p.acc, 0, static_cast<size_t>(p.size) * sizeof(double), p.stream));
}

void step_stats_accumulate(const StepStatsAccumulateParams& p) {
  step_stats_accumulate_kernel<<<1, kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
