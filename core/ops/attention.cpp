// Causal attention: argument checks + dispatch, and the CPU reference (the specification).
#include "core/ops/attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/ops/op_util.h"
#include "cuda/attention.h"

namespace moelab {

namespace ref {

namespace {
template <typename T>
T dot(const T* a, const T* b, int64_t n) {
  T acc = 0;
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// Offsets of the rows of q/grad_q (b, t, h), k/grad_k and v/grad_v (b, j, KV head g),
// out/grad_out (b, t, h) in their [B, T, heads, dim] layouts, and of one lse entry [B, H, T].
struct Offsets {
  const AttentionShape& s;
  int64_t q(int64_t b, int64_t t, int64_t h) const { return ((b * s.T + t) * s.H + h) * s.Dqk; }
  int64_t k(int64_t b, int64_t j, int64_t g) const { return ((b * s.T + j) * s.Hkv + g) * s.Dqk; }
  int64_t v(int64_t b, int64_t j, int64_t g) const { return ((b * s.T + j) * s.Hkv + g) * s.Dv; }
  int64_t o(int64_t b, int64_t t, int64_t h) const { return ((b * s.T + t) * s.H + h) * s.Dv; }
  int64_t lse(int64_t b, int64_t h, int64_t t) const { return (b * s.H + h) * s.T + t; }
};
}  // namespace

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T scale, T* out, T* lse, const AttentionShape& s) {
  const Offsets at{s};
  const int64_t group = s.H / s.Hkv;  // query heads per KV head
#pragma omp parallel
  {
    std::vector<T> p(s.T);  // the scores, then the unnormalised probabilities, of one query row
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < s.B; ++b) {
      for (int64_t h = 0; h < s.H; ++h) {
        for (int64_t t = 0; t < s.T; ++t) {
          const int64_t g = h / group;
          const T* qt = q + at.q(b, t, h);
          T m = -std::numeric_limits<T>::infinity();
          for (int64_t j = 0; j <= t; ++j) {
            p[j] = scale * dot(qt, k + at.k(b, j, g), s.Dqk);
            m = std::max(m, p[j]);
          }
          const T sum = ops_detail::exp_minus_max(p.data(), t + 1, m);
          lse[at.lse(b, h, t)] = m + std::log(sum);  // log sum_j exp(s_j): the row max added back
          T* o = out + at.o(b, t, h);
          for (int64_t d = 0; d < s.Dv; ++d) o[d] = 0;
          for (int64_t j = 0; j <= t; ++j) {
            const T w = p[j] / sum;
            const T* vj = v + at.v(b, j, g);
            for (int64_t d = 0; d < s.Dv; ++d) o[d] += w * vj[d];
          }
        }
      }
    }
  }
}

// One thread owns a (batch, KV head) pair: it writes grad_k and grad_v of that KV head for every
// position, and grad_q of the query heads of its group, walking heads, queries and keys in a fixed
// order. So every output element has one writer, and the sums do not depend on the thread count.
// The probabilities are recomputed from lse instead of being stored: p_j = exp(s_j - lse_t).
template <typename T>
void attention_backward(const T* grad_out, const T* q, const T* k, const T* v, const T* out, const T* lse, T scale,
                        T* grad_q, T* grad_k, T* grad_v, const AttentionShape& s) {
  const Offsets at{s};
  const int64_t group = s.H / s.Hkv;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t g = 0; g < s.Hkv; ++g) {
      for (int64_t j = 0; j < s.T; ++j) {
        std::fill_n(grad_k + at.k(b, j, g), s.Dqk, T(0));
        std::fill_n(grad_v + at.v(b, j, g), s.Dv, T(0));
      }
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        for (int64_t t = 0; t < s.T; ++t) {
          const T* qt = q + at.q(b, t, h);
          const T* go = grad_out + at.o(b, t, h);
          const T row_lse = lse[at.lse(b, h, t)];
          const T D = dot(go, out + at.o(b, t, h), s.Dv);  // = sum_j p_j dp_j, softmax's Jacobian term
          T* gq = grad_q + at.q(b, t, h);
          std::fill_n(gq, s.Dqk, T(0));
          for (int64_t j = 0; j <= t; ++j) {
            const T* kj = k + at.k(b, j, g);
            const T* vj = v + at.v(b, j, g);
            const T p = std::exp(scale * dot(qt, kj, s.Dqk) - row_lse);
            const T ds = p * (dot(go, vj, s.Dv) - D);
            T* gk = grad_k + at.k(b, j, g);
            T* gv = grad_v + at.v(b, j, g);
            for (int64_t d = 0; d < s.Dqk; ++d) gq[d] += ds * kj[d];
            for (int64_t d = 0; d < s.Dqk; ++d) gk[d] += scale * ds * qt[d];
            for (int64_t d = 0; d < s.Dv; ++d) gv[d] += p * go[d];
          }
          for (int64_t d = 0; d < s.Dqk; ++d) gq[d] *= scale;
        }
      }
    }
  }
}

template void attention_forward<float>(const float*, const float*, const float*, float, float*, float*,
                                       const AttentionShape&);
template void attention_forward<double>(const double*, const double*, const double*, double, double*, double*,
                                        const AttentionShape&);
template void attention_backward<float>(const float*, const float*, const float*, const float*, const float*,
                                        const float*, float, float*, float*, float*, const AttentionShape&);
template void attention_backward<double>(const double*, const double*, const double*, const double*, const double*,
                                         const double*, double, double*, double*, double*, const AttentionShape&);

}  // namespace ref

namespace {
// Shapes and dtypes shared by forward and backward; every tensor must match q's dtype and device.
ref::AttentionShape check_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                                    const Tensor& out, const Tensor& lse, float scale) {
  check_ndim(op, "q", q, 4, 4);
  check_ndim(op, "k", k, 4, 4);
  check_ndim(op, "v", v, 4, 4);
  const int64_t B = q.size(0), T = q.size(1), H = q.size(2), Dqk = q.size(3), Hkv = k.size(2), Dv = v.size(3);
  check_shape(op, "k", k, {B, T, Hkv, Dqk});
  MOELAB_CHECK(Hkv >= 1 && H % Hkv == 0, op, ": q has H = ", H, " heads and k has Hkv = ", Hkv,
               " heads; H must be a multiple of Hkv");
  check_shape(op, "v", v, {B, T, Hkv, Dv});
  check_shape(op, "out", out, {B, T, H, Dv});
  check_shape(op, "lse", lse, {B, H, T});
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"k", &k}, {"v", &v}, {"out", &out}})
    check_dtype(op, name, *t, q.dtype());
  // lse is a statistic: f32 on CUDA whatever the activations; on the CPU it matches q.
  check_dtype(op, "lse", lse, q.device() == Device::CUDA ? DType::F32 : q.dtype());
  MOELAB_CHECK(std::isfinite(scale) && scale > 0.0f, op, ": scale is ", scale, ", expected a finite value > 0");
  return {B, T, H, Hkv, Dqk, Dv};
}

// What the CUDA kernels take beyond the shared checks.
void check_cuda_attention(const char* op, const Tensor& q, const ref::AttentionShape& s) {
  ops_detail::check_cuda_f32_or_bf16(op, "q", q);
  MOELAB_CHECK(s.Dqk <= cuda::kAttentionMaxHeadDim && s.Dv <= cuda::kAttentionMaxHeadDim, op, ": head dims Dqk = ",
               s.Dqk, " and Dv = ", s.Dv, " (q is ", q.str(), "); the CUDA kernels take at most ",
               cuda::kAttentionMaxHeadDim);
  MOELAB_CHECK(s.B <= 65535 && s.H <= 65535, op, ": B = ", s.B, " and H = ", s.H,
               " must be <= 65535 on CUDA (grid dims); q is ", q.str());
}

// The fields the CUDA forward and backward share beyond their tensors.
template <typename Params>
void set_cuda_common(Params& p, const Exec& ex, const ref::AttentionShape& s, float scale, const Tensor& q,
                     AttentionImpl impl) {
  p.B = s.B; p.T = s.T; p.H = s.H; p.Hkv = s.Hkv; p.Dqk = s.Dqk; p.Dv = s.Dv;
  p.scale = scale;
  p.bf16 = q.dtype() == DType::BF16;
  p.kernel = impl == AttentionImpl::Naive ? cuda::AttentionKernel::Reference : cuda::AttentionKernel::Flash;
  p.stream = ex.stream;
}
}  // namespace

void attention_forward(const Exec& ex, const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                       const Tensor& out, const Tensor& lse, AttentionImpl impl) {
  const char* op = "attention_forward";
  const ref::AttentionShape s = check_attention(op, q, k, v, out, lse, scale);
  check_same_device(op, {{"q", &q}, {"k", &k}, {"v", &v}, {"out", &out}, {"lse", &lse}});
  if (q.device() == Device::CUDA) {
    check_cuda_attention(op, q, s);
    cuda::AttentionForwardParams p;
    p.q = q.raw();
    p.k = k.raw();
    p.v = v.raw();
    p.out = out.raw();
    p.lse = lse.data<float>();
    set_cuda_common(p, ex, s, scale, q, impl);
    cuda::attention_forward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, q, [&](auto tag) {
    using T = decltype(tag);
    auto* fn = impl == AttentionImpl::Naive ? &ref::attention_forward<T> : &gemm::attention_forward<T>;
    fn(q.data<T>(), k.data<T>(), v.data<T>(), static_cast<T>(scale), out.data<T>(), lse.data<T>(), s);
  });
}

void attention_backward(const Exec& ex, const Tensor& grad_out, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, float scale, const Tensor& grad_q, const Tensor& grad_k,
                        const Tensor& grad_v, AttentionImpl impl) {
  const char* op = "attention_backward";
  const ref::AttentionShape s = check_attention(op, q, k, v, out, lse, scale);
  check_shape(op, "grad_out", grad_out, out.shape());
  check_shape(op, "grad_q", grad_q, q.shape());
  check_shape(op, "grad_k", grad_k, k.shape());
  check_shape(op, "grad_v", grad_v, v.shape());
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad_out", &grad_out}, {"grad_q", &grad_q},
                                {"grad_k", &grad_k}, {"grad_v", &grad_v}})
    check_dtype(op, name, *t, q.dtype());
  check_same_device(op, {{"grad_out", &grad_out}, {"q", &q}, {"k", &k}, {"v", &v}, {"out", &out}, {"lse", &lse},
                         {"grad_q", &grad_q}, {"grad_k", &grad_k}, {"grad_v", &grad_v}});
  if (q.device() == Device::CUDA) {
    check_cuda_attention(op, q, s);
    cuda::AttentionBackwardParams p;
    p.grad_out = grad_out.raw();
    p.q = q.raw();
    p.k = k.raw();
    p.v = v.raw();
    p.out = out.raw();
    p.lse = lse.data<float>();
    p.grad_q = grad_q.raw();
    p.grad_k = grad_k.raw();
    p.grad_v = grad_v.raw();
    set_cuda_common(p, ex, s, scale, q, impl);
    cuda::attention_backward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, q, [&](auto tag) {
    using T = decltype(tag);
    auto* fn = impl == AttentionImpl::Naive ? &ref::attention_backward<T> : &gemm::attention_backward<T>;
    fn(grad_out.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<T>(), static_cast<T>(scale),
       grad_q.data<T>(), grad_k.data<T>(), grad_v.data<T>(), s);
  });
}

}  // namespace moelab
