// Sum of squares in double with a fixed two-pass reduction, and the in-place scale for clipping.
#include <algorithm>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/grad_norm.h"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 256;  // a power of two: the shared-memory trees below
static_assert((kGradNormBlocks & (kGradNormBlocks - 1)) == 0, "kGradNormBlocks must be a power of two");

// Sums s[0..count) (count a power of two, count <= blockDim.x) into s[0] in a fixed tree.
__device__ void tree_sum(double* s, int count) {
  for (int half = count / 2; half > 0; half /= 2) {
    if (static_cast<int>(threadIdx.x) < half) s[threadIdx.x] += s[threadIdx.x + half];
    __syncthreads();
  }
}

__global__ void sum_squares_partial_kernel(const float* x, int64_t n, double* partials) {
  __shared__ double s[kThreads];
  const int64_t stride = static_cast<int64_t>(kGradNormBlocks) * kThreads;
  double acc = 0.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const double v = x[i];
    acc += v * v;
  }
  s[threadIdx.x] = acc;
  __syncthreads();
  tree_sum(s, kThreads);
  if (threadIdx.x == 0) partials[blockIdx.x] = s[0];
}

// One block of kThreads: thread i adds partials i, i + kThreads, ... in order, then a fixed tree.
__global__ void sum_partials_kernel(const double* partials, double* result) {
  __shared__ double s[kThreads];
  double acc = 0.0;
  for (int b = threadIdx.x; b < kGradNormBlocks; b += kThreads) acc += partials[b];
  s[threadIdx.x] = acc;
  __syncthreads();
  tree_sum(s, kThreads);
  if (threadIdx.x == 0) *result = s[0];
}

__global__ void scale_kernel(float* x, int64_t n, float factor) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) x[i] *= factor;
}

}  // namespace

void grad_sum_squares(const GradSumSquaresParams& p) {
  // Always the full fixed grid (n = 0 included): every partial is written, the result is defined.
  sum_squares_partial_kernel<<<kGradNormBlocks, kThreads, 0, p.stream>>>(p.x, p.n, p.partials);
  CUDA_CHECK_LAUNCH();
  sum_partials_kernel<<<1, kThreads, 0, p.stream>>>(p.partials, p.result);
  CUDA_CHECK_LAUNCH();
}

void grad_scale(const GradScaleParams& p) {
  if (p.n == 0) return;
  const unsigned blocks = std::min(blocks_for(p.n, kThreads), 65536u);
  scale_kernel<<<blocks, kThreads, 0, p.stream>>>(p.x, p.n, p.factor);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
