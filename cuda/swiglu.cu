// SwiGLU kernels: one thread per element, computed in f32 with the overflow-free sigmoid of the
// CPU reference (ref::sigmoid in core/ops/activation.h).
#include <cuda_bf16.h>

#include <type_traits>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/swiglu.h"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 256;

// exp's argument stays <= 0: no overflow for any a, and tiny results keep their digits.
__device__ __forceinline__ float stable_sigmoid(float a) {
  if (a >= 0.0f) return 1.0f / (1.0f + expf(-a));
  const float e = expf(a);
  return e / (1.0f + e);
}

template <typename T>
__global__ void swiglu_forward_kernel(const T* gate, const T* up, T* out, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float a = load(gate, i);
  store(out, i, a * stable_sigmoid(a) * load(up, i));
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* grad_out, const T* gate, const T* up, T* grad_gate, T* grad_up,
                                       int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float a = load(gate, i), s = stable_sigmoid(a), g = load(grad_out, i);
  const float dsilu = s * (1.0f + a * (1.0f - s));
  store(grad_gate, i, g * load(up, i) * dsilu);
  store(grad_up, i, g * a * s);
}

}  // namespace

void swiglu_forward(const SwigluForwardParams& p) {
  if (p.n == 0) return;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    swiglu_forward_kernel<<<blocks_for(p.n, kThreads), kThreads, 0, p.stream>>>(
        static_cast<const T*>(p.gate), static_cast<const T*>(p.up), static_cast<T*>(p.out), p.n);
    CUDA_CHECK_LAUNCH();
  });
}

void swiglu_backward(const SwigluBackwardParams& p) {
  if (p.n == 0) return;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    swiglu_backward_kernel<<<blocks_for(p.n, kThreads), kThreads, 0, p.stream>>>(
        static_cast<const T*>(p.grad_out), static_cast<const T*>(p.gate), static_cast<const T*>(p.up),
        static_cast<T*>(p.grad_gate), static_cast<T*>(p.grad_up), p.n);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace moelab::cuda
