// The CPU's GEMM: C = alpha op(A) op(B) + beta C on row-major matrices with row strides, the one
// place where the CPU ops multiply matrices (matmul, attention's blocks).
//   f32: oneDNN's dnnl_sgemm (its JIT kernels for the CPU it runs on). On this project's shapes (a
//        2048 x 128 x 128 projection, a 256-row expert, the M-long reductions of the weight
//        gradients) it measured 1.3-1.7x Eigen's GEMM on one AVX2 core (examples/BENCHMARKS.md).
//   f64: Eigen's GEMM (the gradient checks), accumulating in double.
// Both thread with the caller's OpenMP: all of omp_get_max_threads() outside a parallel region,
// one thread inside one. For a given thread count and shape the result is the same on every call
// (training resumes bit for bit), but oneDNN's f32 sums depend on the thread count and on M and N
// (its kernels and its split of the work differ), so a run on 1 thread and one on 2 agree to
// rounding, not bitwise; Eigen's f64 GEMM does not split its sums.
// Shapes: op(A) [M, K], op(B) [K, N], C [M, N]; lda, ldb, ldc are row strides in elements (A is
// stored [M, K], or [K, M] when trans_a; B [K, N], or [N, K] when trans_b).
// beta == 0 overwrites C (whatever it held, NaN included); K == 0 gives C = beta C.
// Errors: oneDNN refusing the call (a bad stride) throws, naming the shapes.
#pragma once

#include <cstdint>

namespace moelab::ref {

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc);

}  // namespace moelab::ref
