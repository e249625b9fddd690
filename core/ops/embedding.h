// Token embedding (MODEL.md: Emb, shared by the main model and the MTP modules): a row gather.
//   out[n, :] = weight[ids[n], :]
// Backward (a scatter-add, so repeated ids add up): grad_weight[ids[n], :] += grad_out[n, :]
// Shapes: ids: [...] (N tokens, e.g. [B, T])   weight: [V, D]   out, grad_out: [..., D] (ids' dims + D)
// Contract: forward OVERWRITES out. backward ACCUMULATES (+=) into grad_weight (there is no
// gradient for the integer ids), deterministically: the same bits for any thread count.
// Every id must lie in [0, V); both directions check this first and throw naming the id, its
// (flat) position and V. On CUDA the check runs in the kernels (a bad id is never read or written)
// and the op then reads one word back (a device sync per call) and throws the same error; the
// outputs of the good ids may have been written by then.
// Dtypes: ids i32; CPU: weight, out, grad_out, grad_weight all f32 or all f64.
//         CUDA: weight and out both f32 or both bf16; grad_out f32 or bf16, grad_weight f32.
// CUDA backward: a stable sort of the ids, then one writer per grad_weight element that adds its
// tokens in token order (bit-identical to the CPU in f32). Both directions take their device
// scratch from ex.scratch (core/exec.h): a 4-byte flag, and for backward the sort's workspace
// (about 12 bytes per token plus the sort's own scratch).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void embedding_forward(const Exec& ex, const Tensor& ids, const Tensor& weight, const Tensor& out);
void embedding_backward(const Exec& ex, const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight);

// The references trust their ids (the Tensor API above checks them).
namespace ref {
template <typename T>
void embedding_forward(const int32_t* ids, const T* weight, T* out, int64_t tokens, int64_t dim);
template <typename T>
void embedding_backward(const T* grad_out, const int32_t* ids, T* grad_weight, int64_t tokens, int64_t dim);
}  // namespace ref

}  // namespace moelab
