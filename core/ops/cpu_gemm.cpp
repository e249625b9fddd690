// The CPU's GEMM: oneDNN for f32, Eigen for f64 (see cpu_gemm.h).
#include "core/ops/cpu_gemm.h"

#include <dnnl.h>
#include <omp.h>

// GCC 12 with -march=native (AVX-512) reports a false -Wmaybe-uninitialized inside Eigen 3.4's
// double GEMM packing (gemm_pack_rhs, through _mm512_extractf64x4_pd); silence it for Eigen only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#pragma GCC diagnostic pop

#include "core/check.h"

namespace moelab::ref {

namespace {
// C = beta C, for K == 0 (nothing to multiply; oneDNN wants K >= 1). beta == 0 writes zeros.
template <typename T>
void scale_c(int64_t m, int64_t n, T beta, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
}
}  // namespace

template <>
void gemm<float>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
                 int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) return scale_c(m, n, beta, c, ldc);
  // oneDNN sizes its work split by omp_get_max_threads(), also inside a parallel region where its
  // own region gets one thread; a call from a thread of ours must plan for one thread. The setting
  // belongs to this thread's task in our region and ends with it.
  if (omp_in_parallel() && omp_get_max_threads() > 1) omp_set_num_threads(1);
  const dnnl_status_t st =
      dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  MOELAB_CHECK(st == dnnl_success, "gemm: oneDNN's dnnl_sgemm failed (status ", static_cast<int>(st), ") on M ", m,
               " N ", n, " K ", k, ", trans_a ", trans_a, " trans_b ", trans_b, ", lda ", lda, " ldb ", ldb, " ldc ",
               ldc);
}

template <>
void gemm<double>(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
                  int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) return scale_c(m, n, beta, c, ldc);
  using Mat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using View = Eigen::Map<const Mat, 0, Eigen::OuterStride<>>;
  // Row-major views of the stored matrices; op() is Eigen's transpose of the view.
  const View A(a, trans_a ? k : m, trans_a ? m : k, Eigen::OuterStride<>(lda));
  const View B(b, trans_b ? n : k, trans_b ? k : n, Eigen::OuterStride<>(ldb));
  Eigen::Map<Mat, 0, Eigen::OuterStride<>> C(c, m, n, Eigen::OuterStride<>(ldc));
  if (beta == 0.0) C.setZero();
  else if (beta != 1.0) C *= beta;
  if (!trans_a && !trans_b) C.noalias() += alpha * A * B;
  else if (!trans_a) C.noalias() += alpha * A * B.transpose();
  else if (!trans_b) C.noalias() += alpha * A.transpose() * B;
  else C.noalias() += alpha * A.transpose() * B.transpose();
}

}  // namespace moelab::ref
