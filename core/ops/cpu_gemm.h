// The CPU's f32 GEMM: C = alpha op(A) op(B) + beta C on row-major matrices, through oneDNN's
// dnnl_sgemm (its JIT kernels for the CPU it runs on). Measured on this project's shapes (a
// 2048 x 128 x 128 projection, a 256-row expert, the M-long reductions of the weight gradients)
// it runs 1.3-1.7x faster than Eigen's GEMM on one AVX2 core (examples/BENCHMARKS.md). It
// threads with the caller's OpenMP: omp_get_max_threads() outside a parallel region, one thread
// inside one. For a given thread count and shape the result is the same on every call.
// Shapes: op(A) [M, K], op(B) [K, N], C [M, N]; lda, ldb, ldc are row strides in elements.
// Errors: oneDNN refusing the call (a bad stride) throws, naming the shapes.
#pragma once

#include <cstdint>

namespace moelab::ref {

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace moelab::ref
