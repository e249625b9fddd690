// Column blocks of a row-major matrix, each the other's backward:
//   concat_columns: out[n, :] = [a[n, :] ; b[n, :]]     (MTP's [RMSNorm(emb) ; RMSNorm(h)])
//   split_columns:  [a[n, :] ; b[n, :]] = x[n, :]        (MLA's [ckv ; kr] = W_kva x)
//   slice_columns:  out[n, :] = x[n, begin : begin + W]  (a token window's inputs and targets)
// Shapes: a: [..., A], b: [..., B], x/out: [..., A + B] with the same leading dims (N rows);
//         slice_columns: x: [..., C], out: [..., W] with begin + W <= C.
// Contract: the outputs are OVERWRITTEN. Backward of concat is split of the gradient, and vice versa.
// Dtypes: any dtype (a plain copy by byte size: i32 token windows, f32, bf16, ...), all operands the
//         same, on the CPU and on CUDA.
#pragma once

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void concat_columns(const Exec& ex, const Tensor& a, const Tensor& b, const Tensor& out);
void split_columns(const Exec& ex, const Tensor& x, const Tensor& a, const Tensor& b);
void slice_columns(const Exec& ex, const Tensor& x, int64_t begin, const Tensor& out);

}  // namespace moelab
