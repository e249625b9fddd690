// Causal attention on the CPU through matrix products: the same math as the naive reference in
// attention.cpp (the specification), organised per (batch, head) and per block of query rows so
// that the work is GEMMs (cpu_gemm.h) and vectorised exp instead of scalar dot products:
//   S = scale * Q_blk K[0:t1]^T   (masked above the diagonal),  lse = rowlogsumexp(S),
//   P = exp(S - lse),  O_blk = P V[0:t1]
// backward, with D = rowsum(dO_blk * O_blk):
//   dP = dO_blk V^T,  dS = P * (dP - D),  dQ_blk = scale dS K,  dK += scale dS^T Q_blk,  dV += P^T dO_blk
// A block of kBlock query rows only needs the keys up to its last row, which skips most of the
// masked half of S. Threads own (batch, head) pairs in forward and (batch, KV head) pairs in
// backward (a KV head's gradients sum over its query heads in a fixed order), so results do not
// depend on the thread count. The GEMMs run single-threaded inside the OpenMP region.
#include <algorithm>
#include <cmath>

// GCC 12 + AVX-512: a false -Wmaybe-uninitialized inside Eigen's GEMM packing (see matmul.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#pragma GCC diagnostic pop

#include "core/ops/attention.h"
#include "core/ops/cpu_gemm.h"

namespace moelab::gemm {

namespace {
constexpr int64_t kBlock = 64;  // query rows per block: S is kBlock x T, small enough for L2

// The S / dP block as an Eigen array view for the row-wise max, exp and sums (vectorised).
template <typename T>
using Rows = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>>;
// A thread's block buffer, aligned as Eigen's packets: Eigen's exp of a row takes the scalar path
// for the elements before the first aligned packet, so the rounding of an element depends on its
// address modulo the packet size; a buffer aligned the same way in every thread keeps the results
// independent of the thread count.
template <typename T>
using BlockBuffer = Eigen::Matrix<T, Eigen::Dynamic, 1>;

// One head's rows inside a [B, T, heads, dim] tensor: its first element; rows are heads * dim apart.
template <typename T>
T* head(T* base, int64_t b, int64_t h, int64_t T_, int64_t heads, int64_t dim) {
  return base + (b * T_ * heads + h) * dim;
}

// S[rows, t1] (query rows t0..t1-1, keys 0..t1-1) = scale * Q K^T. Row r's keys past t0 + r are
// masked: the row loops below read only the first t0 + r + 1 entries of each row and write zeros
// after them (P and dS are 0 there), so no exp is spent on the masked part.
template <typename T>
void scores(const T* Q, int64_t ldq, const T* K, int64_t ldk, int64_t dqk, T scale, int64_t t0, int64_t t1, T* S) {
  ref::gemm<T>(false, true, t1 - t0, t1, dqk, scale, Q + t0 * ldq, ldq, K, ldk, T(0), S, t1);
}
}  // namespace

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T scale, T* out, T* lse, const ref::AttentionShape& s) {
  const int64_t group = s.H / s.Hkv;
  const int64_t ldq = s.H * s.Dqk, ldk = s.Hkv * s.Dqk, ldv = s.Hkv * s.Dv, ldo = s.H * s.Dv;
#pragma omp parallel
  {
    BlockBuffer<T> S_buf(kBlock * s.T);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.B; ++b) {
      for (int64_t h = 0; h < s.H; ++h) {
        const T* Q = head(q, b, h, s.T, s.H, s.Dqk);
        const T* K = head(k, b, h / group, s.T, s.Hkv, s.Dqk);
        const T* V = head(v, b, h / group, s.T, s.Hkv, s.Dv);
        T* O = head(out, b, h, s.T, s.H, s.Dv);
        T* L = lse + (b * s.H + h) * s.T;
        for (int64_t t0 = 0; t0 < s.T; t0 += kBlock) {
          const int64_t t1 = std::min(s.T, t0 + kBlock), rows = t1 - t0;
          scores(Q, ldq, K, ldk, s.Dqk, scale, t0, t1, S_buf.data());
          Rows<T> S(S_buf.data(), rows, t1);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t n = t0 + r + 1;  // the keys row r sees
            auto p = S.row(r).head(n);
            const T m = p.maxCoeff();  // subtracting the row max keeps exp() <= 1
            p = (p - m).exp();
            const T sum = p.sum();
            L[t0 + r] = m + std::log(sum);
            p /= sum;
            S.row(r).tail(t1 - n).setZero();
          }
          ref::gemm<T>(false, false, rows, s.Dv, t1, T(1), S_buf.data(), t1, V, ldv, T(0), O + t0 * ldo, ldo);  // P V
        }
      }
    }
  }
}

template <typename T>
void attention_backward(const T* grad_out, const T* q, const T* k, const T* v, const T* out, const T* lse, T scale,
                        T* grad_q, T* grad_k, T* grad_v, const ref::AttentionShape& s) {
  const int64_t group = s.H / s.Hkv;
  const int64_t ldq = s.H * s.Dqk, ldk = s.Hkv * s.Dqk, ldv = s.Hkv * s.Dv, ldo = s.H * s.Dv;
#pragma omp parallel
  {
    BlockBuffer<T> S_buf(kBlock * s.T), dP_buf(kBlock * s.T);
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.B; ++b) {
      for (int64_t g = 0; g < s.Hkv; ++g) {
        const T* K = head(k, b, g, s.T, s.Hkv, s.Dqk);
        const T* V = head(v, b, g, s.T, s.Hkv, s.Dv);
        T* dK = head(grad_k, b, g, s.T, s.Hkv, s.Dqk);
        T* dV = head(grad_v, b, g, s.T, s.Hkv, s.Dv);
        for (int64_t t = 0; t < s.T; ++t) {
          std::fill(dK + t * ldk, dK + t * ldk + s.Dqk, T(0));
          std::fill(dV + t * ldv, dV + t * ldv + s.Dv, T(0));
        }
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          const T* Q = head(q, b, h, s.T, s.H, s.Dqk);
          const T* O = head(out, b, h, s.T, s.H, s.Dv);
          const T* dO = head(grad_out, b, h, s.T, s.H, s.Dv);
          T* dQ = head(grad_q, b, h, s.T, s.H, s.Dqk);
          const T* L = lse + (b * s.H + h) * s.T;
          for (int64_t t0 = 0; t0 < s.T; t0 += kBlock) {
            const int64_t t1 = std::min(s.T, t0 + kBlock), rows = t1 - t0;
            scores(Q, ldq, K, ldk, s.Dqk, scale, t0, t1, S_buf.data());
            Rows<T> P(S_buf.data(), rows, t1), dS(dP_buf.data(), rows, t1);
            ref::gemm<T>(false, true, rows, t1, s.Dv, T(1), dO + t0 * ldo, ldo, V, ldv, T(0), dP_buf.data(), t1);  // dP
            for (int64_t r = 0; r < rows; ++r) {
              const int64_t n = t0 + r + 1;  // the keys row r sees
              const T* o = O + (t0 + r) * ldo;
              const T* d_o = dO + (t0 + r) * ldo;
              T D = 0;
              for (int64_t c = 0; c < s.Dv; ++c) D += d_o[c] * o[c];
              P.row(r).head(n) = (P.row(r).head(n) - L[t0 + r]).exp();
              dS.row(r).head(n) = P.row(r).head(n) * (dS.row(r).head(n) - D);
              P.row(r).tail(t1 - n).setZero();
              dS.row(r).tail(t1 - n).setZero();
            }
            ref::gemm<T>(false, false, rows, s.Dqk, t1, scale, dP_buf.data(), t1, K, ldk, T(0), dQ + t0 * ldq, ldq);
            ref::gemm<T>(true, false, t1, s.Dqk, rows, scale, dP_buf.data(), t1, Q + t0 * ldq, ldq, T(1), dK, ldk);
            ref::gemm<T>(true, false, t1, s.Dv, rows, T(1), S_buf.data(), t1, dO + t0 * ldo, ldo, T(1), dV, ldv);
          }
        }
      }
    }
  }
}

template void attention_forward<float>(const float*, const float*, const float*, float, float*, float*,
                                       const ref::AttentionShape&);
template void attention_forward<double>(const double*, const double*, const double*, double, double*, double*,
                                        const ref::AttentionShape&);
template void attention_backward<float>(const float*, const float*, const float*, const float*, const float*,
                                        const float*, float, float*, float*, float*, const ref::AttentionShape&);
template void attention_backward<double>(const double*, const double*, const double*, const double*, const double*,
                                         const double*, double, double*, double*, double*, const ref::AttentionShape&);

}  // namespace moelab::gemm
