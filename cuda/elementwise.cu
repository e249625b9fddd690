// Elementwise kernels: one thread per element, each element read and then written by that same
// thread, so an output may alias an input. Every value is computed in f32.
#include <cuda_bf16.h>

#include <type_traits>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/elementwise.h"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void add_kernel(const T* a, const T* b, T* out, int64_t n) {
  const int64_t i = thread_index();
  if (i < n) store(out, i, load(a, i) + load(b, i));
}

template <typename T>
__global__ void axpy_kernel(float alpha, const T* x, T* y, int64_t n) {
  const int64_t i = thread_index();
  if (i < n) store(y, i, load(y, i) + alpha * load(x, i));
}

template <typename S, typename D>
__global__ void cast_kernel(const S* x, D* y, int64_t n) {
  const int64_t i = thread_index();
  if (i < n) store(y, i, load(x, i));  // load widens exactly; the bf16 store rounds to nearest even
}

template <typename S>
void launch_cast(const S* x, const CastParams& p) {
  const unsigned grid = blocks_for(p.n, kThreads);
  if (p.y_bf16) cast_kernel<<<grid, kThreads, 0, p.stream>>>(x, static_cast<__nv_bfloat16*>(p.y), p.n);
  else cast_kernel<<<grid, kThreads, 0, p.stream>>>(x, static_cast<float*>(p.y), p.n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void add(const AddParams& p) {
  if (p.n == 0) return;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    add_kernel<<<blocks_for(p.n, kThreads), kThreads, 0, p.stream>>>(static_cast<const T*>(p.a), static_cast<const T*>(p.b),
                                                                    static_cast<T*>(p.out), p.n);
    CUDA_CHECK_LAUNCH();
  });
}

void axpy(const AxpyParams& p) {
  if (p.n == 0) return;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    axpy_kernel<<<blocks_for(p.n, kThreads), kThreads, 0, p.stream>>>(p.alpha, static_cast<const T*>(p.x),
                                                                      static_cast<T*>(p.y), p.n);
    CUDA_CHECK_LAUNCH();
  });
}

void cast(const CastParams& p) {
  if (p.n == 0) return;
  if (p.x_bf16) launch_cast(static_cast<const __nv_bfloat16*>(p.x), p);
  else launch_cast(static_cast<const float*>(p.x), p);
}

}  // namespace moelab::cuda
