// The cuBLASLt context (DESIGN.md: "handles live in a context object passed down"): one handle, a
// 32 MiB workspace and a cache of matmul plans (descriptors + the heuristic's algorithm) per GEMM
// shape, so every shape pays for descriptor creation and the heuristic query once per run.
//
// gemm() speaks ROW-MAJOR, the layout of every moelab tensor:
//   C[m, n] = alpha * op_a(A)[m, k] . op_b(B)[k, n] + beta * C[m, n]
// with op_a(A) = A ([m, k] stored) or A^T ([k, m] stored), likewise B, all dense (leading dimension
// = stored row length). cuBLASLt is column-major, so gemm() computes C^T = op_b(B)^T op_a(A)^T: a
// row-major [r, c] matrix is the column-major [c, r] one with the same pointer (TOOLCHAIN.md's "TN"
// form for the Linear forward falls out of this).
// The three GEMMs of a Linear y = x W^T (x [M, K], W [N, K]):
//   forward  y  = x W^T:        m = M, n = N, k = K, trans_b
//   backward dx = dy W:         m = M, n = K, k = N
//   backward dW += dy^T x:      m = N, n = K, k = M, trans_a, beta = 1 (gradients accumulate)
// Types: A and B share one type (f32 or bf16); C is f32 or bf16; accumulation is always f32
// (CUBLAS_COMPUTE_32F; with f32 inputs that is full fp32, no TF32, so that f32 runs can be checked
// tightly against the CPU). bf16 inputs with an f32 C is how weight gradients accumulate into the
// f32 gradient buffer.
// Batched: `batch` > 1 runs independent GEMMs whose matrices start stride_a/b/c ELEMENTS apart.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "cuda/fp8_gemm.h"
#include "cuda/stream.h"

namespace moelab::cuda {

enum class GemmType : uint8_t { F32, BF16 };

struct GemmParams {
  const void* a = nullptr;
  const void* b = nullptr;
  void* c = nullptr;
  int64_t m = 0, n = 0, k = 0;
  bool trans_a = false, trans_b = false;
  GemmType ab_type = GemmType::F32;
  GemmType c_type = GemmType::F32;
  float alpha = 1.0f, beta = 0.0f;
  int64_t batch = 1, stride_a = 0, stride_b = 0, stride_c = 0;
  Stream stream = nullptr;
};

class Blas {
 public:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;  // cuBLASLt's recommendation for Hopper

  Blas();  // creates the handle and the workspace on the current device
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  void gemm(const GemmParams& p);
  // The FP8 GEMM of cuda/fp8_gemm.h through cuBLASLt's block scaling (sm_90: VEC128_32F for Row128
  // operands, BLK128x128_32F for Block128; not both Block128). Returns false, having launched
  // nothing, where cuBLASLt cannot run it (another architecture, a shape or alignment it refuses, no
  // algorithm from the heuristic): the caller then runs fp8_gemm_reference.
  bool gemm_fp8(const Fp8GemmParams& p);
  size_t cached_plans() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moelab::cuda
