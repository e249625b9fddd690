// Causal attention over a KV cache: argument checks + dispatch, and the CPU reference.
#include "core/ops/attention_decode.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/ops/op_util.h"
#include "cuda/attention_decode.h"

namespace moelab {

namespace ref {

template <typename T>
void attention_decode_forward(const T* q, const T* k, const T* v, T scale, T* out, const AttentionDecodeShape& s) {
  const int64_t group = s.H / s.Hkv;  // query heads per KV head
#pragma omp parallel
  {
    std::vector<T> p(s.pos + s.n);  // the scores, then the unnormalised probabilities, of one query row
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < s.B; ++b) {
      for (int64_t t = 0; t < s.n; ++t) {
        for (int64_t h = 0; h < s.H; ++h) {
          const int64_t g = h / group, last = s.pos + t;  // the query's own position: the causal limit
          const T* qt = q + ((b * s.n + t) * s.H + h) * s.Dqk;
          T m = -std::numeric_limits<T>::infinity();
          for (int64_t j = 0; j <= last; ++j) {
            const T* kj = k + ((b * s.S + j) * s.Hkv + g) * s.Dqk;
            T acc = 0;
            for (int64_t d = 0; d < s.Dqk; ++d) acc += qt[d] * kj[d];
            p[j] = scale * acc;
            m = std::max(m, p[j]);
          }
          const T sum = ops_detail::exp_minus_max(p.data(), last + 1, m);
          T* o = out + ((b * s.n + t) * s.H + h) * s.Dv;
          std::fill_n(o, s.Dv, T(0));
          for (int64_t j = 0; j <= last; ++j) {
            const T w = p[j] / sum;
            const T* vj = v + ((b * s.S + j) * s.Hkv + g) * s.Dv;
            for (int64_t d = 0; d < s.Dv; ++d) o[d] += w * vj[d];
          }
        }
      }
    }
  }
}

template void attention_decode_forward<float>(const float*, const float*, const float*, float, float*,
                                              const AttentionDecodeShape&);
template void attention_decode_forward<double>(const double*, const double*, const double*, double, double*,
                                               const AttentionDecodeShape&);

}  // namespace ref

void attention_decode_forward(const Exec& ex, const Tensor& q, const Tensor& k, const Tensor& v, float scale,
                              int64_t pos, const Tensor& out) {
  const char* op = "attention_decode_forward";
  check_ndim(op, "q", q, 4, 4);
  check_ndim(op, "k", k, 4, 4);
  check_ndim(op, "v", v, 4, 4);
  const int64_t B = q.size(0), n = q.size(1), H = q.size(2), Dqk = q.size(3);
  const int64_t S = k.size(1), Hkv = k.size(2), Dv = v.size(3);
  check_shape(op, "k", k, {B, S, Hkv, Dqk});
  check_shape(op, "v", v, {B, S, Hkv, Dv});
  check_shape(op, "out", out, {B, n, H, Dv});
  MOELAB_CHECK(Hkv >= 1 && H % Hkv == 0, op, ": q has H = ", H, " heads and k has Hkv = ", Hkv,
               " heads; H must be a multiple of Hkv");
  MOELAB_CHECK(pos >= 0 && pos + n <= S, op, ": positions [", pos, ", ", pos + n, ") do not fit the cache's ", S,
               " positions (k is ", k.str(), ")");
  MOELAB_CHECK(std::isfinite(scale) && scale > 0.0f, op, ": scale is ", scale, ", expected a finite value > 0");
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"k", &k}, {"v", &v}, {"out", &out}})
    check_dtype(op, name, *t, q.dtype());
  check_same_device(op, {{"q", &q}, {"k", &k}, {"v", &v}, {"out", &out}});
  if (q.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "q", q);
    ops_detail::check_cuda_query_rows(op, B * n * H);
    cuda::AttentionDecodeParams p;
    p.q = q.raw();
    p.k = k.raw();
    p.v = v.raw();
    p.out = out.raw();
    p.B = B; p.n = n; p.S = S; p.H = H; p.Hkv = Hkv; p.Dqk = Dqk; p.Dv = Dv;
    p.pos = pos;
    p.scale = scale;
    p.bf16 = q.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::attention_decode_forward(p);
    return;
  }
  const ref::AttentionDecodeShape s{B, n, S, H, Hkv, Dqk, Dv, pos};
  ops_detail::dispatch_cpu_float(op, q, [&](auto tag) {
    using T = decltype(tag);
    ref::attention_decode_forward<T>(q.data<T>(), k.data<T>(), v.data<T>(), static_cast<T>(scale), out.data<T>(), s);
  });
}

}  // namespace moelab
