#include "core/ops/mla_kv.h"

#include "core/ops/op_util.h"
#include "cuda/mla_kv.h"

namespace moelab {

namespace ref {

template <typename T>
void mla_kv_forward(const T* kv, const T* kr, T* k, T* v, const MlaKvShape& s) {
  const int64_t dkv = s.Dn + s.Dv, dk = s.Dn + s.Dr;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.N; ++n) {
    for (int64_t h = 0; h < s.H; ++h) {
      const T* src = kv + (n * s.H + h) * dkv;
      T* kd = k + (n * s.H + h) * dk;
      T* vd = v + (n * s.H + h) * s.Dv;
      for (int64_t d = 0; d < s.Dn; ++d) kd[d] = src[d];
      for (int64_t d = 0; d < s.Dr; ++d) kd[s.Dn + d] = kr[n * s.Dr + d];
      for (int64_t d = 0; d < s.Dv; ++d) vd[d] = src[s.Dn + d];
    }
  }
}

template <typename T>
void mla_kv_backward(const T* grad_k, const T* grad_v, T* grad_kv, T* grad_kr, const MlaKvShape& s) {
  const int64_t dkv = s.Dn + s.Dv, dk = s.Dn + s.Dr;
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < s.N; ++n) {
    T* gkr = grad_kr + n * s.Dr;
    for (int64_t d = 0; d < s.Dr; ++d) gkr[d] = 0;
    for (int64_t h = 0; h < s.H; ++h) {  // heads in order: the rope-key sum is deterministic
      const T* gk = grad_k + (n * s.H + h) * dk;
      const T* gv = grad_v + (n * s.H + h) * s.Dv;
      T* dst = grad_kv + (n * s.H + h) * dkv;
      for (int64_t d = 0; d < s.Dn; ++d) dst[d] = gk[d];
      for (int64_t d = 0; d < s.Dv; ++d) dst[s.Dn + d] = gv[d];
      for (int64_t d = 0; d < s.Dr; ++d) gkr[d] += gk[s.Dn + d];
    }
  }
}

template void mla_kv_forward<float>(const float*, const float*, float*, float*, const MlaKvShape&);
template void mla_kv_forward<double>(const double*, const double*, double*, double*, const MlaKvShape&);
template void mla_kv_backward<float>(const float*, const float*, float*, float*, const MlaKvShape&);
template void mla_kv_backward<double>(const double*, const double*, double*, double*, const MlaKvShape&);

}  // namespace ref

namespace {
// Checks the four tensors against each other; returns the shape (kv/k/v named as in forward).
ref::MlaKvShape check_mla_kv(const char* op, const Tensor& kv, const Tensor& kr, const Tensor& k, const Tensor& v,
                             int64_t heads, int64_t nope_dim) {
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"kv", &kv}, {"kr", &kr}, {"k", &k}, {"v", &v}}) {
    check_ndim(op, name, *t, 2, 4);
    check_dtype(op, name, *t, kv.dtype());
  }
  check_same_device(op, {{"kv", &kv}, {"kr", &kr}, {"k", &k}, {"v", &v}});
  MOELAB_CHECK(heads > 0 && nope_dim > 0, op, ": heads = ", heads, " and nope_dim = ", nope_dim, " must be > 0");
  const int64_t n = ops_detail::rows_of(kr), dr = kr.size(-1);
  MOELAB_CHECK(n > 0 && dr > 0, op, ": kr is ", kr.str(), ", expected at least one token and Dr > 0");
  MOELAB_CHECK(kv.numel() % (n * heads) == 0 && v.numel() % (n * heads) == 0, op, ": kv ", kv.str(), " / v ", v.str(),
               " do not hold ", n, " tokens x ", heads, " heads");
  const int64_t dv = v.numel() / (n * heads);
  MOELAB_CHECK(kv.numel() == n * heads * (nope_dim + dv), op, ": kv is ", kv.str(), ", expected ", n, " x ", heads,
               " x (Dn ", nope_dim, " + Dv ", dv, ")");
  MOELAB_CHECK(k.numel() == n * heads * (nope_dim + dr), op, ": k is ", k.str(), ", expected ", n, " x ", heads,
               " x (Dn ", nope_dim, " + Dr ", dr, ")");
  return {n, heads, nope_dim, dr, dv};
}
}  // namespace

void mla_kv_forward(const Exec& ex, const Tensor& kv, const Tensor& kr, int64_t heads, int64_t nope_dim,
                    const Tensor& k, const Tensor& v) {
  const char* op = "mla_kv_forward";
  const ref::MlaKvShape s = check_mla_kv(op, kv, kr, k, v, heads, nope_dim);
  if (kv.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "kv", kv);
    cuda::MlaKvForwardParams p;
    p.kv = kv.raw();
    p.kr = kr.raw();
    p.k = k.raw();
    p.v = v.raw();
    p.N = s.N; p.H = s.H; p.Dn = s.Dn; p.Dr = s.Dr; p.Dv = s.Dv;
    p.bf16 = kv.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::mla_kv_forward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, kv, [&](auto tag) {
    using T = decltype(tag);
    ref::mla_kv_forward<T>(kv.data<T>(), kr.data<T>(), k.data<T>(), v.data<T>(), s);
  });
}

void mla_kv_backward(const Exec& ex, const Tensor& grad_k, const Tensor& grad_v, int64_t heads, int64_t nope_dim,
                     const Tensor& grad_kv, const Tensor& grad_kr) {
  const char* op = "mla_kv_backward";
  const ref::MlaKvShape s = check_mla_kv(op, grad_kv, grad_kr, grad_k, grad_v, heads, nope_dim);
  if (grad_kv.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "grad_kv", grad_kv);
    cuda::MlaKvBackwardParams p;
    p.grad_k = grad_k.raw();
    p.grad_v = grad_v.raw();
    p.grad_kv = grad_kv.raw();
    p.grad_kr = grad_kr.raw();
    p.N = s.N; p.H = s.H; p.Dn = s.Dn; p.Dr = s.Dr; p.Dv = s.Dv;
    p.bf16 = grad_kv.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::mla_kv_backward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, grad_kv, [&](auto tag) {
    using T = decltype(tag);
    ref::mla_kv_backward<T>(grad_k.data<T>(), grad_v.data<T>(), grad_kv.data<T>(), grad_kr.data<T>(), s);
  });
}

}  // namespace moelab
