// RMSNorm kernels: one warp per row for y / grad_x; grad_weight by column tiles that walk the rows
// in a fixed order (no atomics), so two runs give identical bits.
#include <cuda_bf16.h>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/rmsnorm.h"

namespace moelab::cuda {

namespace {

constexpr int kRowsPerBlock = 8;  // 8 warps = 256 threads per block for the row kernels

template <typename T>
__global__ void rmsnorm_forward_kernel(const T* x, const float* weight, T* y, float* rstd, int64_t rows, int64_t dim,
                                       float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;  // whole warps leave together: the shuffles below stay full-warp
  const T* xr = x + row * dim;
  float sum_sq = 0.0f;
  for (int64_t d = threadIdx.x; d < dim; d += kWarp) {
    const float v = load(xr, d);
    sum_sq += v * v;
  }
  sum_sq = warp_sum(sum_sq);
  const float s = 1.0f / sqrtf(sum_sq / static_cast<float>(dim) + eps);  // IEEE sqrt and divide, not rsqrtf
  if (threadIdx.x == 0) rstd[row] = s;
  T* yr = y + row * dim;
  for (int64_t d = threadIdx.x; d < dim; d += kWarp) store(yr, d, load(xr, d) * s * weight[d]);
}

template <typename T>
__global__ void rmsnorm_backward_x_kernel(const T* grad_y, const T* x, const float* weight, const float* rstd,
                                          T* grad_x, int64_t rows, int64_t dim) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;
  const T* gy = grad_y + row * dim;
  const T* xr = x + row * dim;
  const float s = rstd[row];
  float dot = 0.0f;
  for (int64_t d = threadIdx.x; d < dim; d += kWarp) dot += load(gy, d) * weight[d] * load(xr, d) * s;
  const float mean_dot = warp_sum(dot) / static_cast<float>(dim);
  T* gx = grad_x + row * dim;
  for (int64_t d = threadIdx.x; d < dim; d += kWarp)
    store(gx, d, s * (load(gy, d) * weight[d] - load(xr, d) * s * mean_dot));
}

// Block (32 columns) x (kRowGroups row groups): thread (c, g) sums rows g, g + kRowGroups, ...
// of column c; the groups are then added in order 0..kRowGroups-1.
constexpr int kRowGroups = 32;

template <typename T>
__global__ void rmsnorm_backward_weight_kernel(const T* grad_y, const T* x, const float* rstd, float* grad_weight,
                                               int64_t rows, int64_t dim) {
  __shared__ float partial[kRowGroups][kWarp + 1];  // +1: no bank conflicts on the column read
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  float acc = 0.0f;
  if (col < dim)
    for (int64_t r = threadIdx.y; r < rows; r += kRowGroups) acc += load(grad_y, r * dim + col) * load(x, r * dim + col) * rstd[r];
  partial[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < dim) {
    float sum = 0.0f;
    for (int g = 0; g < kRowGroups; ++g) sum += partial[g][threadIdx.x];
    grad_weight[col] += sum;
  }
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void rmsnorm_forward(const RmsnormForwardParams& p) {
  if (p.rows == 0) return;
  const dim3 block(kWarp, kRowsPerBlock);
  if (p.bf16)
    rmsnorm_forward_kernel<<<row_blocks(p.rows), block, 0, p.stream>>>(
        static_cast<const __nv_bfloat16*>(p.x), p.weight, static_cast<__nv_bfloat16*>(p.y), p.rstd, p.rows, p.dim, p.eps);
  else
    rmsnorm_forward_kernel<<<row_blocks(p.rows), block, 0, p.stream>>>(
        static_cast<const float*>(p.x), p.weight, static_cast<float*>(p.y), p.rstd, p.rows, p.dim, p.eps);
  CUDA_CHECK_LAUNCH();
}

void rmsnorm_backward(const RmsnormBackwardParams& p) {
  if (p.rows == 0) return;
  const dim3 block(kWarp, kRowsPerBlock);
  const dim3 wblock(kWarp, kRowGroups);
  const unsigned wgrid = static_cast<unsigned>((p.dim + kWarp - 1) / kWarp);
  if (p.bf16) {
    auto gy = static_cast<const __nv_bfloat16*>(p.grad_y);
    auto x = static_cast<const __nv_bfloat16*>(p.x);
    rmsnorm_backward_x_kernel<<<row_blocks(p.rows), block, 0, p.stream>>>(gy, x, p.weight, p.rstd,
                                                                         static_cast<__nv_bfloat16*>(p.grad_x), p.rows, p.dim);
    CUDA_CHECK_LAUNCH();
    rmsnorm_backward_weight_kernel<<<wgrid, wblock, 0, p.stream>>>(gy, x, p.rstd, p.grad_weight, p.rows, p.dim);
  } else {
    auto gy = static_cast<const float*>(p.grad_y);
    auto x = static_cast<const float*>(p.x);
    rmsnorm_backward_x_kernel<<<row_blocks(p.rows), block, 0, p.stream>>>(gy, x, p.weight, p.rstd,
                                                                         static_cast<float*>(p.grad_x), p.rows, p.dim);
    CUDA_CHECK_LAUNCH();
    rmsnorm_backward_weight_kernel<<<wgrid, wblock, 0, p.stream>>>(gy, x, p.rstd, p.grad_weight, p.rows, p.dim);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
