// MLA key/value shuffle kernels: one thread per output element (k and v in the forward; grad_kv,
// then grad_kr in the backward). Copies move the stored values unchanged (no rounding); grad_kr's
// head sum is f32, one thread per (token, rope dim) adding the heads in order 0..H-1.
#include <cuda_bf16.h>

#include <type_traits>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/mla_kv.h"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 256;

// k[n, h, d] = d < Dn ? kv[n, h, d] : kr[n, d - Dn]
template <typename T>
__global__ void mla_k_forward_kernel(const T* kv, const T* kr, T* k, int64_t N, int64_t H, int64_t Dn, int64_t Dr,
                                     int64_t Dv) {
  const int64_t i = thread_index(), dk = Dn + Dr;
  if (i >= N * H * dk) return;
  const int64_t d = i % dk, nh = i / dk, n = nh / H;
  k[i] = d < Dn ? kv[nh * (Dn + Dv) + d] : kr[n * Dr + (d - Dn)];
}

// v[n, h, d] = kv[n, h, Dn + d]
template <typename T>
__global__ void mla_v_forward_kernel(const T* kv, T* v, int64_t NH, int64_t Dn, int64_t Dv) {
  const int64_t i = thread_index();
  if (i >= NH * Dv) return;
  const int64_t d = i % Dv, nh = i / Dv;
  v[i] = kv[nh * (Dn + Dv) + Dn + d];
}

// grad_kv[n, h, d] = d < Dn ? grad_k[n, h, d] : grad_v[n, h, d - Dn]
template <typename T>
__global__ void mla_grad_kv_kernel(const T* grad_k, const T* grad_v, T* grad_kv, int64_t NH, int64_t Dn, int64_t Dr,
                                   int64_t Dv) {
  const int64_t i = thread_index(), dkv = Dn + Dv;
  if (i >= NH * dkv) return;
  const int64_t d = i % dkv, nh = i / dkv;
  grad_kv[i] = d < Dn ? grad_k[nh * (Dn + Dr) + d] : grad_v[nh * Dv + (d - Dn)];
}

// grad_kr[n, d] = sum_h grad_k[n, h, Dn + d], heads in order (as the CPU reference).
template <typename T>
__global__ void mla_grad_kr_kernel(const T* grad_k, T* grad_kr, int64_t N, int64_t H, int64_t Dn, int64_t Dr) {
  const int64_t i = thread_index();
  if (i >= N * Dr) return;
  const int64_t d = i % Dr, n = i / Dr, dk = Dn + Dr;
  float acc = 0.0f;
  for (int64_t h = 0; h < H; ++h) acc += load(grad_k, (n * H + h) * dk + Dn + d);
  store(grad_kr, i, acc);
}

}  // namespace

void mla_kv_forward(const MlaKvForwardParams& p) {
  if (p.N == 0 || p.H == 0) return;
  const int64_t nh = p.N * p.H;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto kv = static_cast<const T*>(p.kv);
    if (p.Dn + p.Dr > 0) {
      mla_k_forward_kernel<<<blocks_for(nh * (p.Dn + p.Dr), kThreads), kThreads, 0, p.stream>>>(
          kv, static_cast<const T*>(p.kr), static_cast<T*>(p.k), p.N, p.H, p.Dn, p.Dr, p.Dv);
      CUDA_CHECK_LAUNCH();
    }
    if (p.Dv > 0) {
      mla_v_forward_kernel<<<blocks_for(nh * p.Dv, kThreads), kThreads, 0, p.stream>>>(kv, static_cast<T*>(p.v), nh,
                                                                                      p.Dn, p.Dv);
      CUDA_CHECK_LAUNCH();
    }
  });
}

void mla_kv_backward(const MlaKvBackwardParams& p) {
  if (p.N == 0 || p.H == 0) return;
  const int64_t nh = p.N * p.H;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    auto gk = static_cast<const T*>(p.grad_k);
    if (p.Dn + p.Dv > 0) {
      mla_grad_kv_kernel<<<blocks_for(nh * (p.Dn + p.Dv), kThreads), kThreads, 0, p.stream>>>(
          gk, static_cast<const T*>(p.grad_v), static_cast<T*>(p.grad_kv), nh, p.Dn, p.Dr, p.Dv);
      CUDA_CHECK_LAUNCH();
    }
    if (p.Dr > 0) {
      mla_grad_kr_kernel<<<blocks_for(p.N * p.Dr, kThreads), kThreads, 0, p.stream>>>(gk, static_cast<T*>(p.grad_kr),
                                                                                     p.N, p.H, p.Dn, p.Dr);
      CUDA_CHECK_LAUNCH();
    }
  });
}

}  // namespace moelab::cuda
