// MLA's absorbed attention over the latent cache: argument checks + dispatch, and the CPU reference.
#include "core/ops/mla_decode.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/ops/op_util.h"
#include "cuda/mla_decode.h"

namespace moelab {

namespace ref {

template <typename T>
void mla_decode_attention(const T* q, const T* w_kvb, const T* ckv, const T* kr, T scale, T* out,
                          const MlaDecodeShape& s) {
  const int64_t C = s.Ckv;
#pragma omp parallel
  {
    std::vector<T> qa(C), lat(C), p(s.pos + s.n);  // absorbed query, attended latent, scores of one row
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < s.B; ++b) {
      for (int64_t t = 0; t < s.n; ++t) {
        for (int64_t h = 0; h < s.H; ++h) {
          const T* q_nope = q + ((b * s.n + t) * s.H + h) * (s.Dn + s.Dr);
          const T* q_rope = q_nope + s.Dn;
          const T* w_uk = w_kvb + h * (s.Dn + s.Dv) * C;  // [Dn, Ckv]: head h's key rows
          const T* w_uv = w_uk + s.Dn * C;                // [Dv, Ckv]: its value rows
          // qa = W_uk^T q_nope: the key half of W_kvb folded into the query.
          std::fill(qa.begin(), qa.end(), T(0));
          for (int64_t d = 0; d < s.Dn; ++d)
            for (int64_t c = 0; c < C; ++c) qa[c] += q_nope[d] * w_uk[d * C + c];
          // Scores over the cached positions up to the query's own: latent part + rope part.
          const int64_t last = s.pos + t;
          T m = -std::numeric_limits<T>::infinity();
          for (int64_t j = 0; j <= last; ++j) {
            const T* cj = ckv + (b * s.S + j) * C;
            const T* rj = kr + (b * s.S + j) * s.Dr;
            T acc = 0;
            for (int64_t c = 0; c < C; ++c) acc += qa[c] * cj[c];
            for (int64_t d = 0; d < s.Dr; ++d) acc += q_rope[d] * rj[d];
            p[j] = scale * acc;
            m = std::max(m, p[j]);
          }
          const T sum = ops_detail::exp_minus_max(p.data(), last + 1, m);
          // The attended latent sum_j p_j ckv_j, then W_uv maps it to the head's Dv output: the
          // value half of W_kvb folded into the output.
          std::fill(lat.begin(), lat.end(), T(0));
          for (int64_t j = 0; j <= last; ++j) {
            const T w = p[j] / sum;
            const T* cj = ckv + (b * s.S + j) * C;
            for (int64_t c = 0; c < C; ++c) lat[c] += w * cj[c];
          }
          T* o = out + ((b * s.n + t) * s.H + h) * s.Dv;
          for (int64_t d = 0; d < s.Dv; ++d) {
            T acc = 0;
            for (int64_t c = 0; c < C; ++c) acc += w_uv[d * C + c] * lat[c];
            o[d] = acc;
          }
        }
      }
    }
  }
}

template void mla_decode_attention<float>(const float*, const float*, const float*, const float*, float, float*,
                                          const MlaDecodeShape&);
template void mla_decode_attention<double>(const double*, const double*, const double*, const double*, double,
                                           double*, const MlaDecodeShape&);

}  // namespace ref

void mla_decode_attention(const Exec& ex, const Tensor& q, const Tensor& w_kvb, const Tensor& ckv, const Tensor& kr,
                          float scale, int64_t pos, const Tensor& out) {
  const char* op = "mla_decode_attention";
  check_ndim(op, "q", q, 4, 4);
  check_ndim(op, "w_kvb", w_kvb, 2, 2);
  check_ndim(op, "ckv", ckv, 3, 3);
  check_ndim(op, "kr", kr, 3, 3);
  check_ndim(op, "out", out, 4, 4);
  const int64_t B = q.size(0), n = q.size(1), H = q.size(2), S = ckv.size(1), Ckv = ckv.size(2);
  const int64_t Dr = kr.size(2), Dn = q.size(3) - Dr, Dv = out.size(3);
  MOELAB_CHECK(Dn >= 0, op, ": q ", q.str(), " has fewer dims per head than the rope key kr ", kr.str());
  check_shape(op, "kr", kr, {B, S, Dr});
  check_shape(op, "ckv", ckv, {B, S, Ckv});
  check_shape(op, "w_kvb", w_kvb, {H * (Dn + Dv), Ckv});
  check_shape(op, "out", out, {B, n, H, Dv});
  MOELAB_CHECK(pos >= 0 && pos + n <= S, op, ": positions [", pos, ", ", pos + n, ") do not fit the cache's ", S,
               " positions (ckv is ", ckv.str(), ")");
  MOELAB_CHECK(std::isfinite(scale) && scale > 0.0f, op, ": scale is ", scale, ", expected a finite value > 0");
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"ckv", &ckv}, {"kr", &kr}, {"out", &out}})
    check_dtype(op, name, *t, q.dtype());
  check_same_device(op, {{"q", &q}, {"w_kvb", &w_kvb}, {"ckv", &ckv}, {"kr", &kr}, {"out", &out}});
  if (q.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "q", q);
    ops_detail::check_cuda_query_rows(op, B * n * H);
    ops_detail::check_cuda_f32_or_bf16(op, "w_kvb", w_kvb);
    cuda::MlaDecodeParams p;
    p.q = q.raw();
    p.w_kvb = w_kvb.raw();
    p.ckv = ckv.raw();
    p.kr = kr.raw();
    p.out = out.raw();
    p.B = B; p.n = n; p.S = S; p.H = H; p.Dn = Dn; p.Dr = Dr; p.Dv = Dv; p.Ckv = Ckv;
    p.pos = pos;
    p.scale = scale;
    p.bf16 = q.dtype() == DType::BF16;
    p.w_bf16 = w_kvb.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::mla_decode_attention(p);
    return;
  }
  check_dtype(op, "w_kvb", w_kvb, q.dtype());
  const ref::MlaDecodeShape s{B, n, S, H, Dn, Dr, Dv, Ckv, pos};
  ops_detail::dispatch_cpu_float(op, q, [&](auto tag) {
    using T = decltype(tag);
    ref::mla_decode_attention<T>(q.data<T>(), w_kvb.data<T>(), ckv.data<T>(), kr.data<T>(), static_cast<T>(scale),
                                 out.data<T>(), s);
  });
}

}  // namespace moelab
