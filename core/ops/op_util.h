// Helpers shared by the op files: choosing the CPU reference's scalar type from a tensor dtype, the
// checks several ops make alike, and the softmax loop of the attention references.
#pragma once

#include <cmath>
#include <cstdint>

#include "core/tensor.h"

namespace moelab::ops_detail {

// Calls fn(float{}) or fn(double{}) for an f32 or f64 CPU tensor; anything else is an error that
// names the op (the CPU references are the specification and run in f32, or f64 for checks).
template <typename Fn>
void dispatch_cpu_float(const char* op, const Tensor& t, Fn&& fn) {
  if (t.dtype() == DType::F32) fn(float{});
  else if (t.dtype() == DType::F64) fn(double{});
  else MOELAB_FAIL(op, ": the CPU reference takes f32 or f64 tensors, got ", t.str());
}

// The dtypes the CUDA kernels take for activations (and the few parameters they read in either
// precision): f32 or bf16, computed in f32. Anything else is an error naming the op and the tensor.
inline void check_cuda_f32_or_bf16(const char* op, const char* name, const Tensor& t) {
  MOELAB_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::BF16, op, ": ", name, " is ", t.str(),
               ", expected f32 or bf16 on CUDA");
}

// The decode attention kernels (attention_decode, mla_decode) run one block per query row, B x n x H
// of them, in a 1-D grid: at most 2^31 - 1 blocks.
inline void check_cuda_query_rows(const char* op, int64_t rows) {
  MOELAB_CHECK(rows <= INT32_MAX, op, ": ", rows, " query rows (B x n x H) exceed one CUDA grid (2^31 - 1)");
}

// The attention references' softmax over one row of scores p[0, n) whose max is m: p <- exp(p - m),
// every term <= 1 (no overflow), and returns their sum, the normaliser. A plain loop, in order.
template <typename T>
T exp_minus_max(T* p, int64_t n, T m) {
  T sum = 0;
  for (int64_t j = 0; j < n; ++j) {
    p[j] = std::exp(p[j] - m);
    sum += p[j];
  }
  return sum;
}

// For ops that may write in place: `out` is either `in` itself (same storage, offset, size) or
// memory disjoint from it. A partial overlap would make the result depend on the order in which
// elements are written (a race on the GPU), so it is an error naming both tensors.
inline void check_in_place_or_disjoint(const char* op, const char* in_name, const Tensor& in, const char* out_name,
                                       const Tensor& out) {
  if (in.storage() != out.storage()) return;
  const size_t a = in.byte_offset(), b = out.byte_offset();
  if (a == b && in.nbytes() == out.nbytes()) return;
  MOELAB_CHECK(a + in.nbytes() <= b || b + out.nbytes() <= a, op, ": ", out_name, " ", out.str(), " partly overlaps ",
               in_name, " ", in.str(), "; pass the same tensor for in-place or disjoint memory");
}

// Number of rows when the last dim of t is `dim` ([..., dim] -> numel / dim).
inline int64_t rows_of(const Tensor& t) { return t.ndim() ? t.numel() / (t.size(-1) ? t.size(-1) : 1) : 1; }

// The GEMM dims of a matmul y = x w^T (core/ops/matmul.h): x [..., K], w [N, K]; M = x's rows.
struct MatmulDims { int64_t m, k, n; };
MatmulDims check_matmul_shapes(const char* op, const Tensor& x, const Tensor& w);
// x's shape with the last dim replaced by N: the shape of y and grad_y.
Shape matmul_output_shape(const Tensor& x, int64_t n);

}  // namespace moelab::ops_detail
