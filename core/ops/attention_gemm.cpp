// Causal attention on the CPU through matrix products: the same math as the naive reference in
// attention.cpp (the specification), organised per (batch, head) and per block of query rows so
// that the work is Eigen GEMMs and vectorised exp instead of scalar dot products:
//   S = scale * Q_blk K[0:t1]^T   (masked above the diagonal),  lse = rowlogsumexp(S),
//   P = exp(S - lse),  O_blk = P V[0:t1]
// backward, with D = rowsum(dO_blk * O_blk):
//   dP = dO_blk V^T,  dS = P * (dP - D),  dQ_blk = scale dS K,  dK += scale dS^T Q_blk,  dV += P^T dO_blk
// A block of kBlock query rows only needs the keys up to its last row, which skips most of the
// masked half of S. Threads own (batch, head) pairs in forward and (batch, KV head) pairs in
// backward (a KV head's gradients sum over its query heads in a fixed order), so results do not
// depend on the thread count. Eigen runs single-threaded inside the OpenMP region.
#include <algorithm>
#include <cmath>
#include <limits>

// GCC 12 + AVX-512: a false -Wmaybe-uninitialized inside Eigen's GEMM packing (see matmul.cpp).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#pragma GCC diagnostic pop

#include "core/ops/attention.h"

namespace moelab::gemm {

namespace {
constexpr int64_t kBlock = 64;  // query rows per block: S is kBlock x T, small enough for L2

template <typename T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// One head's rows inside a [B, T, heads, dim] tensor: rows T apart by heads * dim elements.
template <typename T>
using HeadMap = Eigen::Map<Mat<T>, 0, Eigen::OuterStride<>>;
template <typename T>
using ConstHeadMap = Eigen::Map<const Mat<T>, 0, Eigen::OuterStride<>>;

template <typename T>
ConstHeadMap<T> head(const T* base, int64_t b, int64_t h, int64_t T_, int64_t heads, int64_t dim) {
  return ConstHeadMap<T>(base + (b * T_ * heads + h) * dim, T_, dim, Eigen::OuterStride<>(heads * dim));
}
template <typename T>
HeadMap<T> head(T* base, int64_t b, int64_t h, int64_t T_, int64_t heads, int64_t dim) {
  return HeadMap<T>(base + (b * T_ * heads + h) * dim, T_, dim, Eigen::OuterStride<>(heads * dim));
}

// S (rows t0..t1-1, keys 0..t1-1): scale * Q K^T with the causal mask applied as -inf.
template <typename T>
void masked_scores(const ConstHeadMap<T>& Q, const ConstHeadMap<T>& K, T scale, int64_t t0, int64_t t1, Mat<T>& S) {
  S.noalias() = scale * Q.middleRows(t0, t1 - t0) * K.topRows(t1).transpose();
  for (int64_t r = 0; r < t1 - t0; ++r)
    S.row(r).tail(t1 - (t0 + r + 1)).setConstant(-std::numeric_limits<T>::infinity());
}
}  // namespace

template <typename T>
void attention_forward(const T* q, const T* k, const T* v, T scale, T* out, T* lse, const ref::AttentionShape& s) {
  const int64_t group = s.H / s.Hkv;
#pragma omp parallel
  {
    Mat<T> S;
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.B; ++b) {
      for (int64_t h = 0; h < s.H; ++h) {
        const ConstHeadMap<T> Q = head(q, b, h, s.T, s.H, s.Dqk);
        const ConstHeadMap<T> K = head(k, b, h / group, s.T, s.Hkv, s.Dqk);
        const ConstHeadMap<T> V = head(v, b, h / group, s.T, s.Hkv, s.Dv);
        HeadMap<T> O = head(out, b, h, s.T, s.H, s.Dv);
        T* L = lse + (b * s.H + h) * s.T;
        for (int64_t t0 = 0; t0 < s.T; t0 += kBlock) {
          const int64_t t1 = std::min(s.T, t0 + kBlock);
          S.resize(t1 - t0, t1);
          masked_scores(Q, K, scale, t0, t1, S);
          for (int64_t r = 0; r < t1 - t0; ++r) {
            const T m = S.row(r).maxCoeff();  // subtracting the row max keeps exp() <= 1
            S.row(r) = (S.row(r).array() - m).exp();
            const T sum = S.row(r).sum();
            L[t0 + r] = m + std::log(sum);
            S.row(r) /= sum;
          }
          O.middleRows(t0, t1 - t0).noalias() = S * V.topRows(t1);
        }
      }
    }
  }
}

template <typename T>
void attention_backward(const T* grad_out, const T* q, const T* k, const T* v, const T* out, const T* lse, T scale,
                        T* grad_q, T* grad_k, T* grad_v, const ref::AttentionShape& s) {
  const int64_t group = s.H / s.Hkv;
#pragma omp parallel
  {
    Mat<T> S, dP;
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < s.B; ++b) {
      for (int64_t g = 0; g < s.Hkv; ++g) {
        const ConstHeadMap<T> K = head(k, b, g, s.T, s.Hkv, s.Dqk);
        const ConstHeadMap<T> V = head(v, b, g, s.T, s.Hkv, s.Dv);
        HeadMap<T> dK = head(grad_k, b, g, s.T, s.Hkv, s.Dqk);
        HeadMap<T> dV = head(grad_v, b, g, s.T, s.Hkv, s.Dv);
        dK.setZero();
        dV.setZero();
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          const ConstHeadMap<T> Q = head(q, b, h, s.T, s.H, s.Dqk);
          const ConstHeadMap<T> O = head(out, b, h, s.T, s.H, s.Dv);
          const ConstHeadMap<T> dO = head(grad_out, b, h, s.T, s.H, s.Dv);
          HeadMap<T> dQ = head(grad_q, b, h, s.T, s.H, s.Dqk);
          const T* L = lse + (b * s.H + h) * s.T;
          for (int64_t t0 = 0; t0 < s.T; t0 += kBlock) {
            const int64_t t1 = std::min(s.T, t0 + kBlock), rows = t1 - t0;
            S.resize(rows, t1);
            masked_scores(Q, K, scale, t0, t1, S);
            for (int64_t r = 0; r < rows; ++r) S.row(r) = (S.row(r).array() - L[t0 + r]).exp();  // P
            dP.resize(rows, t1);
            dP.noalias() = dO.middleRows(t0, rows) * V.topRows(t1).transpose();
            for (int64_t r = 0; r < rows; ++r) {
              const T D = dO.row(t0 + r).dot(O.row(t0 + r));
              dP.row(r) = S.row(r).array() * (dP.row(r).array() - D);  // dS
            }
            dQ.middleRows(t0, rows).noalias() = scale * dP * K.topRows(t1);
            dK.topRows(t1).noalias() += scale * dP.transpose() * Q.middleRows(t0, rows);
            dV.topRows(t1).noalias() += S.transpose() * dO.middleRows(t0, rows);
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
