// Top-k kernels: one warp per row. The order "a ranks before b" (larger first, NaN above every
// number, equal values and NaNs by the lower index, +0 == -0) is a strict total order, so the j-th
// pick is the best entry that ranks after the (j-1)-th: K warp-wide arg-max passes over the row,
// no per-row storage, and exactly the CPU's indices whatever the reduction tree. Backward: each
// lane owns entries e = lane, lane + 32, ... and sums the grad_values that selected e in j order
// (the CPU's order): one writer per element, deterministic.
#include <cuda_runtime.h>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/topk.h"

namespace moelab::cuda {

namespace {

constexpr int kRowsPerBlock = 4;  // 4 warps = 128 threads per block

// "(va, a) ranks before (vb, b)": NaN first (among NaNs the lower index), then larger values, equal
// values by the lower index.
__device__ __forceinline__ bool ranks_before(float va, int a, float vb, int b) {
  const bool nan_a = isnan(va), nan_b = isnan(vb);
  if (nan_a != nan_b) return nan_a;
  if (!nan_a && va != vb) return va > vb;
  return a < b;
}

__global__ void topk_forward_kernel(const float* x, float* values, int32_t* indices, int64_t rows, int E, int K) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;  // whole warps leave together: the shuffles below stay full-warp
  const int lane = threadIdx.x;
  const float* xr = x + row * E;
  float prev_v = 0.0f;
  int prev_i = -1;  // the previous pick; -1 before the first
  for (int j = 0; j < K; ++j) {
    float best_v = 0.0f;
    int best_i = -1;  // -1: this lane has no candidate left
    for (int e = lane; e < E; e += kWarp) {
      const float v = xr[e];
      if (prev_i >= 0 && !ranks_before(prev_v, prev_i, v, e)) continue;  // already picked
      if (best_i < 0 || ranks_before(v, e, best_v, best_i)) {
        best_v = v;
        best_i = e;
      }
    }
    for (int off = kWarp / 2; off > 0; off /= 2) {  // arg-max under the total order: any tree gives the same
      const float ov = __shfl_xor_sync(0xffffffffu, best_v, off);
      const int oi = __shfl_xor_sync(0xffffffffu, best_i, off);
      if (oi >= 0 && (best_i < 0 || ranks_before(ov, oi, best_v, best_i))) {
        best_v = ov;
        best_i = oi;
      }
    }
    if (lane == 0) {
      indices[row * K + j] = best_i;
      values[row * K + j] = best_v;
    }
    prev_v = best_v;
    prev_i = best_i;
  }
}

__global__ void topk_backward_kernel(const float* grad_values, const int32_t* indices, float* grad_x, int64_t rows,
                                     int64_t E, int64_t K) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;
  const int32_t* idx = indices + row * K;
  const float* gv = grad_values + row * K;
  bool bad = false;
  for (int64_t j = 0; j < K; ++j) bad = bad || idx[j] < 0 || idx[j] >= E;
  float* gx = grad_x + row * E;
  for (int64_t e = threadIdx.x; e < E; e += kWarp) {
    float acc = 0.0f;
    for (int64_t j = 0; j < K; ++j)
      if (idx[j] == e) acc += gv[j];
    gx[e] = bad ? NAN : acc;
  }
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void topk_forward(const TopkForwardParams& p) {
  if (p.rows == 0) return;
  topk_forward_kernel<<<row_blocks(p.rows), dim3(kWarp, kRowsPerBlock), 0, p.stream>>>(
      p.x, p.values, p.indices, p.rows, static_cast<int>(p.E), static_cast<int>(p.K));
  CUDA_CHECK_LAUNCH();
}

void topk_backward(const TopkBackwardParams& p) {
  if (p.rows == 0) return;
  topk_backward_kernel<<<row_blocks(p.rows), dim3(kWarp, kRowsPerBlock), 0, p.stream>>>(p.grad_values, p.indices,
                                                                                       p.grad_x, p.rows, p.E, p.K);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
