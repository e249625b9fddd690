// The CPU's f32 GEMM through oneDNN (see cpu_gemm.h).
#include "core/ops/cpu_gemm.h"

#include <dnnl.h>


#include "core/check.h"

namespace moelab::ref {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // op(A) op(B) is zero: C = beta C (oneDNN wants K >= 1)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == 0.0f ? 0.0f : beta * c[i * ldc + j];
    return;
  }
  const dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta,
                                      c, ldc);
  MOELAB_CHECK(st == dnnl_success, "sgemm: oneDNN's dnnl_sgemm failed (status ", static_cast<int>(st), ") on M ", m,
               " N ", n, " K ", k, ", trans_a ", trans_a, " trans_b ", trans_b, ", lda ", lda, " ldb ", ldb, " ldc ",
               ldc);
}

}  // namespace moelab::ref
