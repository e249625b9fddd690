// Column blocks of a row-major matrix, each the other's backward:
//   concat_columns: out[n, :] = [a[n, :] ; b[n, :]]     (MTP's [RMSNorm(emb) ; RMSNorm(h)])
//   split_columns:  [a[n, :] ; b[n, :]] = x[n, :]        (MLA's [ckv ; kr] = W_kva x)
// Shapes: a: [..., A], b: [..., B], x/out: [..., A + B] with the same leading dims (N rows).
// Contract: the outputs are OVERWRITTEN. Backward of concat is split of the gradient, and vice versa.
// Dtypes: any dtype (a plain copy), all operands the same. CUDA: no kernel yet.
#pragma once

#include "core/tensor.h"

namespace moelab {

void concat_columns(const Tensor& a, const Tensor& b, const Tensor& out);
void split_columns(const Tensor& x, const Tensor& a, const Tensor& b);

}  // namespace moelab
