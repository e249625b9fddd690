// Softmax cross-entropy: the next-token loss on the LM head's logits (the main model and every MTP
// depth, MODEL.md):
//   lse[n]    = log sum_v e^logits[n, v]            (computed with the row max subtracted)
//   losses[n] = lse[n] - logits[n, targets[n]]      (-log softmax(logits[n])[target]; 0 when ignored)
//   stats     = {sum_n losses[n] over the valid rows (double, fixed order), n_valid, the first row
//                whose target is neither ignore_index nor in [0, V) (-1: none), that target}
//   mean      = loss_sum / n_valid                  (n_valid = rows whose target != ignore_index;
//                                                    0 when every row is ignored, never NaN)
// Backward of g * mean (g = grad_loss, the caller's d total / d mean, e.g. 1, or the MTP weight
// lambda / D_mtp):
//   grad_logits[n, :] = g * (softmax(logits[n]) - onehot(targets[n])) / n_valid    for valid rows
//   grad_logits[n, :] = 0                                                         for ignored rows
// with softmax(logits[n]) = e^(logits[n] - lse[n]) from the saved lse and n_valid from the
// forward's stats.
// Shapes: logits, grad_logits: [..., V] (2 to 4 dims, N rows, e.g. [B, T, V])   targets, losses, lse: [...]
//         (logits' dims without V, e.g. [B, T], N elements)   stats: f64 [kCrossEntropyStats] on the
//         logits' device.
// Contract: forward OVERWRITES losses, lse (lse of ignored rows too) and stats; backward OVERWRITES
// grad_logits. A target must be ignore_index or lie in [0, V): on the CPU anything else throws,
// naming the row, the value and V.
// Dtypes: targets i32; CPU: logits, losses, lse, grad_logits all f32 or all f64.
//         CUDA: logits, grad_logits both f32 or both bf16; losses, lse f32.
// CUDA: nothing comes back to the host, so neither direction waits for the device: the statistics
// stay in `stats` (the training step accumulates them there: core/ops/step_stats.h) and the
// backward reads n_valid from it on the device. A bad target is found by the forward's scan on
// the device and recorded in stats (its loss is NaN; no kernel reads outside a row): the reader of
// the statistics reports it with the CPU's message (cross_entropy_mean, the step's verdict).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

// The entries of stats.
constexpr int64_t kCrossEntropyLossSum = 0, kCrossEntropyValid = 1, kCrossEntropyBadRow = 2,
                  kCrossEntropyBadTarget = 3, kCrossEntropyStats = 4;

void cross_entropy_forward(const Exec& ex, const Tensor& logits, const Tensor& targets, int ignore_index,
                           const Tensor& losses, const Tensor& lse, const Tensor& stats);
void cross_entropy_backward(const Exec& ex, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            const Tensor& stats, int ignore_index, double grad_loss, const Tensor& grad_logits);

// stats on the host (on CUDA one small copy: it waits for the device).
struct CrossEntropyStats {
  double loss_sum = 0;
  int64_t n_valid = 0, bad_row = -1, bad_target = 0;
  double mean() const { return n_valid ? loss_sum / static_cast<double>(n_valid) : 0.0; }
};
CrossEntropyStats read_cross_entropy_stats(const Tensor& stats);
// The forward, then its mean read back, a bad target thrown with the CPU's message on either
// device: for evaluation and tests, which want the number now.
double cross_entropy_mean(const Exec& ex, const Tensor& logits, const Tensor& targets, int ignore_index,
                          const Tensor& losses, const Tensor& lse, const Tensor& stats);

// The references trust their targets (the Tensor API above checks them). stats: as above (the
// reference never records a bad row).
namespace ref {
template <typename T>
void cross_entropy_forward(const T* logits, const int32_t* targets, int ignore_index, T* losses, T* lse, int64_t rows,
                           int64_t vocab, double* stats);
template <typename T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, int ignore_index, double grad_loss,
                            int64_t n_valid, T* grad_logits, int64_t rows, int64_t vocab);
}  // namespace ref

}  // namespace moelab
