// Sigmoid (one thread per element) and softmax (one warp per row, the row's max / sum / dot
// reduced with the fixed-order warp butterflies: two runs give identical bits).
#include <cuda_bf16.h>

#include <type_traits>

#include "cuda/activation.h"
#include "cuda/check.h"
#include "cuda/device_util.cuh"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kRowsPerBlock = 8;  // 8 warps = 256 threads per block for the row kernels

// The CPU reference's branch (ref::sigmoid): exp's argument stays <= 0, so nothing overflows.
__device__ __forceinline__ float stable_sigmoid(float a) {
  if (a >= 0.0f) return 1.0f / (1.0f + expf(-a));
  const float e = expf(a);
  return e / (1.0f + e);
}

template <typename T>
__global__ void sigmoid_forward_kernel(const T* x, T* y, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) store(y, i, stable_sigmoid(load(x, i)));
}

template <typename T>
__global__ void sigmoid_backward_kernel(const T* grad_y, const T* y, T* grad_x, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float yi = load(y, i);
  store(grad_x, i, load(grad_y, i) * yi * (1.0f - yi));
}

// Three passes over the row by the same lanes (max, sum of e^(x - max), write): every lane reads
// x[c] before it writes y[c] for the same c, so y may even be x.
template <typename T>
__global__ void softmax_forward_kernel(const T* x, T* y, int64_t rows, int64_t cols) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;  // whole warps leave together: the shuffles stay full-warp
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  float max = -INFINITY;
  for (int64_t c = threadIdx.x; c < cols; c += kWarp) max = fmaxf(max, load(xr, c));
  max = warp_max(max);
  float sum = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += kWarp) sum += expf(load(xr, c) - max);
  const float inv = 1.0f / warp_sum(sum);  // sum >= 1: the max element contributes e^0
  for (int64_t c = threadIdx.x; c < cols; c += kWarp) store(yr, c, expf(load(xr, c) - max) * inv);
}

template <typename T>
__global__ void softmax_backward_kernel(const T* grad_y, const T* y, T* grad_x, int64_t rows, int64_t cols) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= rows) return;
  const T* gy = grad_y + row * cols;
  const T* yr = y + row * cols;
  float dot = 0.0f;  // sum_j grad_y_j * y_j
  for (int64_t c = threadIdx.x; c < cols; c += kWarp) dot += load(gy, c) * load(yr, c);
  dot = warp_sum(dot);
  T* gx = grad_x + row * cols;
  for (int64_t c = threadIdx.x; c < cols; c += kWarp) store(gx, c, load(yr, c) * (load(gy, c) - dot));
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void sigmoid_forward(const SigmoidForwardParams& p) {
  if (p.n == 0) return;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    sigmoid_forward_kernel<<<blocks_for(p.n, kThreads), kThreads, 0, p.stream>>>(static_cast<const T*>(p.x),
                                                                                 static_cast<T*>(p.y), p.n);
    CUDA_CHECK_LAUNCH();
  });
}

void sigmoid_backward(const SigmoidBackwardParams& p) {
  if (p.n == 0) return;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    sigmoid_backward_kernel<<<blocks_for(p.n, kThreads), kThreads, 0, p.stream>>>(
        static_cast<const T*>(p.grad_y), static_cast<const T*>(p.y), static_cast<T*>(p.grad_x), p.n);
    CUDA_CHECK_LAUNCH();
  });
}

void softmax_forward(const SoftmaxForwardParams& p) {
  if (p.rows == 0) return;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    softmax_forward_kernel<<<row_blocks(p.rows), dim3(kWarp, kRowsPerBlock), 0, p.stream>>>(
        static_cast<const T*>(p.x), static_cast<T*>(p.y), p.rows, p.cols);
    CUDA_CHECK_LAUNCH();
  });
}

void softmax_backward(const SoftmaxBackwardParams& p) {
  if (p.rows == 0) return;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    softmax_backward_kernel<<<row_blocks(p.rows), dim3(kWarp, kRowsPerBlock), 0, p.stream>>>(
        static_cast<const T*>(p.grad_y), static_cast<const T*>(p.y), static_cast<T*>(p.grad_x), p.rows, p.cols);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace moelab::cuda
