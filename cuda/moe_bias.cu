// The aux-loss-free bias update kernel (MODEL.md, "Load balancing"; core/ops/moe_bias.h):
//   mean = (1/E) sum_j load_j;   b_i += speed * sign(mean - load_i),   sign(0) = 0
// One block. Thread 0 sums the loads in double in index order (the CPU reference's order, so the
// mean has the same bits; E additions are nothing next to the launch), then every thread updates
// a strided share of the experts with the CPU's comparisons and its f32 step.
#include <cuda_runtime.h>

#include "cuda/check.h"
#include "cuda/moe_bias.h"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 256;  // one block; E is a few hundred experts at most in practice

__global__ void moe_bias_update_kernel(const double* load, float* bias, int64_t E, float speed) {
  __shared__ double mean;
  if (threadIdx.x == 0) {
    double sum = 0.0;
    for (int64_t j = 0; j < E; ++j) sum += load[j];
    mean = sum / static_cast<double>(E);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < E; i += blockDim.x) {
    const double l = load[i];
    const int sign = (mean > l) - (mean < l);
    // Explicit round-to-nearest multiply and add: no contraction into an FMA, the CPU's two steps
    // (the product is exact anyway: the sign is -1, 0 or 1).
    bias[i] = __fadd_rn(bias[i], __fmul_rn(speed, static_cast<float>(sign)));
  }
}

}  // namespace

void moe_bias_update(const MoeBiasUpdateParams& p) {
  if (p.E <= 0) return;
  moe_bias_update_kernel<<<1, kThreads, 0, p.stream>>>(p.load, p.bias, p.E, p.speed);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
