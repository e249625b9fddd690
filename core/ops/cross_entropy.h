// Softmax cross-entropy: the next-token loss on the LM head's logits (the main model and every MTP
// depth, MODEL.md):
//   lse[n]    = log sum_v e^logits[n, v]            (computed with the row max subtracted)
//   losses[n] = lse[n] - logits[n, targets[n]]      (-log softmax(logits[n])[target]; 0 when ignored)
//   returns     mean = sum_n losses[n] / n_valid    (n_valid = rows whose target != ignore_index;
//                                                    0 when every row is ignored, never NaN)
// Backward of g * mean (g = grad_loss, the caller's d total / d mean, e.g. 1, or the MTP weight
// lambda / D_mtp):
//   grad_logits[n, :] = g * (softmax(logits[n]) - onehot(targets[n])) / n_valid    for valid rows
//   grad_logits[n, :] = 0                                                         for ignored rows
// with softmax(logits[n]) = e^(logits[n] - lse[n]) from the saved lse.
// Shapes: logits, grad_logits: [..., V] (2 to 4 dims, N rows, e.g. [B, T, V])   targets, losses, lse: [...]
//         (logits' dims without V, e.g. [B, T], N elements).
// Contract: forward OVERWRITES losses and lse (lse of ignored rows too) and returns the mean in
// double; backward OVERWRITES grad_logits. A target must be ignore_index or lie in [0, V);
// anything else throws, naming the row, the value and V.
// Dtypes: targets i32; CPU: logits, losses, lse, grad_logits all f32 or all f64.
//         CUDA: logits, grad_logits both f32 or both bf16; losses, lse f32.
// CUDA: the mean is reduced on the device (double, fixed order: deterministic, within rounding of
// the CPU's row-order sum) and copied back, so the forward waits for the device; the backward
// waits too (it counts n_valid and checks the targets on the device first). A bad target is found
// by the device after the forward kernel ran, so on CUDA losses/lse may be written when it throws.
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

double cross_entropy_forward(const Exec& ex, const Tensor& logits, const Tensor& targets, int ignore_index,
                             const Tensor& losses, const Tensor& lse);
void cross_entropy_backward(const Exec& ex, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            int ignore_index, double grad_loss, const Tensor& grad_logits);

// The references trust their targets (the Tensor API above checks them).
namespace ref {
template <typename T>
double cross_entropy_forward(const T* logits, const int32_t* targets, int ignore_index, T* losses, T* lse,
                             int64_t rows, int64_t vocab);
template <typename T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, int ignore_index, double grad_loss,
                            T* grad_logits, int64_t rows, int64_t vocab);
}  // namespace ref

}  // namespace moelab
