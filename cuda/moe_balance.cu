// MoE balance-loss kernels (MODEL.md, "Load balancing"; core/ops/moe_balance.h has the formulas).
// Aux loss: one block per sequence builds its expert histogram in shared memory (integer atomics:
// order-independent) and writes f_{b,i} = E/(K*T) * count in f64 then rounded to f32, exactly the
// CPU's f; then one warp per row computes Z_t and sum_i f s / Z_t (forward) or adds the gradient
// row (backward). z-loss: one warp per row (max, sum of exp, lse). The forwards sum the per-row
// values in f64 in one block, in a fixed order, and copy the total to the host: deterministic.
#include <cuda_runtime.h>
#include <math_constants.h>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/moe_balance.h"

namespace moelab::cuda {

namespace {

constexpr int kHistThreads = 1024;   // one block per sequence (a single block for the batch-level loss)
constexpr int kRowsPerBlock = 8;     // 8 warps = 256 threads per block for the row kernels
constexpr int kReduceThreads = 1024; // the final sum: one block

__global__ void aux_histogram_kernel(const int32_t* topk_idx, int64_t seq_len, int64_t K, int E, double f_scale,
                                     float* f, int32_t* invalid) {
  extern __shared__ int32_t hist[];  // [E]
  __shared__ int32_t bad;
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[e] = 0;
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  const int64_t b = blockIdx.x, n = seq_len * K;
  const int32_t* idx = topk_idx + b * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int32_t v = idx[i];
    if (v < 0 || v >= E) atomicAdd(&bad, 1);
    else atomicAdd(&hist[v], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x)
    f[b * E + e] = static_cast<float>(static_cast<double>(hist[e]) * f_scale);  // the CPU's f, rounded once
  if (threadIdx.x == 0) invalid[b] = bad;
}

// Z_t = sum_j s_{t,j} and sum_j f_j s_{t,j} of one row, on every lane of the warp.
__device__ __forceinline__ void aux_row_sums(const float* s, const float* fb, int64_t E, float& z, float& fs) {
  z = 0.0f;
  fs = 0.0f;
  for (int64_t j = threadIdx.x; j < E; j += kWarp) {
    z += s[j];
    fs += fb[j] * s[j];
  }
  z = warp_sum(z);
  fs = warp_sum(fs);
}

__global__ void aux_rows_forward_kernel(const float* scores, const float* f, const int32_t* invalid, int64_t rows,
                                        int64_t E, int64_t seq_len, float* row_values) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (t >= rows) return;
  const int64_t b = t / seq_len;
  float z, fs;
  aux_row_sums(scores + t * E, f + b * E, E, z, fs);
  if (threadIdx.x == 0) row_values[t] = invalid[b] ? NAN : fs / z;
}

__global__ void aux_rows_backward_kernel(const float* scores, const float* f, const int32_t* invalid, int64_t rows,
                                         int64_t E, int64_t seq_len, float c, float* grad_scores) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (t >= rows) return;
  const int64_t b = t / seq_len;
  const float* s = scores + t * E;
  const float* fb = f + b * E;
  float z, fs;
  aux_row_sums(s, fb, E, z, fs);
  const bool bad = invalid[b] != 0;
  float* g = grad_scores + t * E;
  for (int64_t j = threadIdx.x; j < E; j += kWarp) g[j] += bad ? NAN : c * (fb[j] - fs / z) / z;
}

// lse of one row, on every lane: max + log(sum_j e^(l_j - max)), so that no e^... overflows.
__device__ __forceinline__ float row_lse(const float* l, int64_t E) {
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < E; j += kWarp) m = fmaxf(m, l[j]);
  m = warp_max(m);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < E; j += kWarp) sum += expf(l[j] - m);
  return m + logf(warp_sum(sum));
}

__global__ void z_rows_forward_kernel(const float* logits, int64_t rows, int64_t E, float* row_values) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (t >= rows) return;
  const float lse = row_lse(logits + t * E, E);
  if (threadIdx.x == 0) row_values[t] = lse * lse;
}

__global__ void z_rows_backward_kernel(const float* logits, int64_t rows, int64_t E, float c, float* grad_logits) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (t >= rows) return;
  const float* l = logits + t * E;
  const float lse = row_lse(l, E);
  float* g = grad_logits + t * E;
  for (int64_t j = threadIdx.x; j < E; j += kWarp) g[j] += c * lse * expf(l[j] - lse);
}

__device__ __forceinline__ double warp_sum_f64(double v) {
  for (int off = kWarp / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// loss[0] = scale * (sum of values[0..n) in f64) / denominator, or NaN when counts[0..m) (the
// out-of-range indices; may be null) sum to more than 0. One block; thread i takes i, i + blockDim,
// ... in order, then a fixed tree: deterministic. scale * sum / denominator is the CPU's expression.
__global__ void sum_kernel(const float* values, int64_t n, const int32_t* counts, int64_t m, double scale,
                           double denominator, double* loss) {
  __shared__ double partial[2][kWarp];
  double acc = 0.0, cnt = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += static_cast<double>(values[i]);
  if (counts)
    for (int64_t i = threadIdx.x; i < m; i += blockDim.x) cnt += static_cast<double>(counts[i]);
  acc = warp_sum_f64(acc);
  cnt = warp_sum_f64(cnt);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  if (lane == 0) {
    partial[0][warp] = acc;
    partial[1][warp] = cnt;
  }
  __syncthreads();
  if (warp == 0) {
    acc = lane < warps ? partial[0][lane] : 0.0;
    cnt = lane < warps ? partial[1][lane] : 0.0;
    acc = warp_sum_f64(acc);
    cnt = warp_sum_f64(cnt);
    if (lane == 0) loss[0] = cnt > 0.0 ? CUDART_NAN : scale * acc / denominator;
  }
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

// The histogram step shared by the aux-loss forward and backward (given fractions: no histogram, and
// no index is counted out of range: the caller counted the selections).
void aux_histogram(const MoeAuxLossParams& p) {
  if (p.f_given) {
    CUDA_CHECK(cudaMemsetAsync(p.invalid, 0, sizeof(int32_t), p.stream));
    return;
  }
  const int64_t num_seqs = p.rows / p.seq_len;
  const double f_scale = static_cast<double>(p.E) / static_cast<double>(p.K * p.seq_len);  // the CPU's expression
  aux_histogram_kernel<<<static_cast<unsigned>(num_seqs), kHistThreads, static_cast<size_t>(p.E) * sizeof(int32_t),
                         p.stream>>>(p.topk_idx, p.seq_len, p.K, static_cast<int>(p.E), f_scale, p.f, p.invalid);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void moe_aux_loss_forward(const MoeAuxLossParams& p) {
  if (p.rows == 0) {
    CUDA_CHECK(cudaMemsetAsync(p.loss, 0, sizeof(double), p.stream));
    return;
  }
  aux_histogram(p);
  aux_rows_forward_kernel<<<row_blocks(p.rows), dim3(kWarp, kRowsPerBlock), 0, p.stream>>>(
      p.scores, p.f, p.invalid, p.rows, p.E, p.seq_len, p.row_values);
  CUDA_CHECK_LAUNCH();
  sum_kernel<<<1, kReduceThreads, 0, p.stream>>>(p.row_values, p.rows, p.invalid, p.rows / p.seq_len, p.alpha,
                                                 p.loss_denominator, p.loss);
  CUDA_CHECK_LAUNCH();
}

void moe_aux_loss_backward(const MoeAuxLossParams& p) {
  if (p.rows == 0) return;
  aux_histogram(p);
  const float c = static_cast<float>(p.grad_loss * p.alpha / static_cast<double>(p.rows));  // the CPU's c
  aux_rows_backward_kernel<<<row_blocks(p.rows), dim3(kWarp, kRowsPerBlock), 0, p.stream>>>(
      p.scores, p.f, p.invalid, p.rows, p.E, p.seq_len, c, p.grad_scores);
  CUDA_CHECK_LAUNCH();
}

void moe_z_loss_forward(const MoeZLossParams& p) {
  if (p.rows == 0) {
    CUDA_CHECK(cudaMemsetAsync(p.loss, 0, sizeof(double), p.stream));
    return;
  }
  z_rows_forward_kernel<<<row_blocks(p.rows), dim3(kWarp, kRowsPerBlock), 0, p.stream>>>(p.logits, p.rows, p.E,
                                                                                         p.row_values);
  CUDA_CHECK_LAUNCH();
  sum_kernel<<<1, kReduceThreads, 0, p.stream>>>(p.row_values, p.rows, nullptr, 0, p.coef,
                                                 static_cast<double>(p.rows), p.loss);  // the CPU's coef * sum / N
  CUDA_CHECK_LAUNCH();
}

void moe_z_loss_backward(const MoeZLossParams& p) {
  if (p.rows == 0) return;
  const float c = static_cast<float>(p.grad_loss * p.coef * 2.0 / static_cast<double>(p.rows));  // the CPU's c
  z_rows_backward_kernel<<<row_blocks(p.rows), dim3(kWarp, kRowsPerBlock), 0, p.stream>>>(p.logits, p.rows, p.E, c,
                                                                                          p.grad_logits);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
