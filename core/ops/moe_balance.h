// The MoE balance losses (MODEL.md, "Load balancing"; GOLDEN.md fixes the details), each a scalar
// added to the training loss, with its gradient into the router.
//
// Balance loss over sequences of T consecutive rows (N = B*T rows, B = N / T sequences):
//   f_{b,i} = E / (K*T) * #{t in b : i in topk_idx[t, :]}       a constant: no gradient flows through it
//   P_{b,i} = (1/T) * sum_{t in b} s_{t,i} / Z_t,   Z_t = sum_j s_{t,j}
//   L = alpha * (1/B) * sum_b sum_i f_{b,i} P_{b,i}
// T = seq_len gives the sequence-wise loss (V3, seq_aux_loss_alpha); T = N the classic batch-level
// one (aux_loss_alpha). Z_t = 1 for softmax scores; for sigmoid scores it normalises them.
// A batch spread over data-parallel processes: its f counts every process's selections, so the
// caller passes batch_fractions = f [E] (seq_len = N, one sequence; f_i = E / (K * N_all) *
// selections of expert i over all N_all rows) and the op takes it instead of counting topk_idx;
// each process's loss then uses its own P, and their mean is the whole batch's loss.
// Backward of grad_loss * L, for t in sequence b:
//   grad_s[t, j] += grad_loss * alpha / (B*T) * (f_{b,j} - sum_i f_{b,i} s_{t,i} / Z_t) / Z_t
//
// Router z-loss (ablation): L = coef * (1/N) * sum_t lse_t^2,   lse_t = log sum_j e^logits[t, j]
// Backward of grad_loss * L:
//   grad_logits[t, j] += grad_loss * coef * 2 * lse_t * softmax(logits[t, :])_j / N
//
// Shapes: scores, grad_scores, logits, grad_logits: [N, E]   topk_idx: i32 [N, K] (the selection
//         before capacity drops; every entry in [0, E)). seq_len must divide N.
// Contract: forward OVERWRITES loss, f64 [1] on the input's device, with the loss in double
// (coefficient included): it stays on the device (the step reads it at the log step, with the
// other statistics: core/ops/step_stats.h). Backward ACCUMULATES (+=) into grad_scores /
// grad_logits, so that each balance term adds its part to the router gradient.
// Dtypes: CPU: float tensors all f32 or all f64; indices i32.
//         CUDA: scores, logits and their gradients f32; indices i32; E <= 8192 for the aux loss.
//         The forwards reduce on the device in a fixed order, asynchronously (no copy to the host).
//         topk_idx is checked on the device: an index out of [0, E) makes the aux forward's loss
//         NaN and turns that sequence's gradient rows into NaN in the backward (the CPU throws,
//         naming the entry). Given batch fractions go up to the device in f32 (one small copy). The CUDA
//         forwards and the aux backward take a small workspace (per-sequence f, per-row values)
//         from ex.scratch (core/exec.h); the z-loss backward needs none.
#pragma once

#include <cstdint>
#include <vector>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void moe_aux_loss_forward(const Exec& ex, const Tensor& scores, const Tensor& topk_idx, int64_t seq_len, double alpha,
                          const Tensor& loss, const std::vector<double>& batch_fractions = {});
void moe_aux_loss_backward(const Exec& ex, const Tensor& scores, const Tensor& topk_idx, int64_t seq_len, double alpha,
                           double grad_loss, const Tensor& grad_scores,
                           const std::vector<double>& batch_fractions = {});
void moe_z_loss_forward(const Exec& ex, const Tensor& logits, double coef, const Tensor& loss);
void moe_z_loss_backward(const Exec& ex, const Tensor& logits, double coef, double grad_loss,
                         const Tensor& grad_logits);

namespace ref {
// The references trust their indices and that seq_len divides rows (the Tensor API checks).
// f: the batch's fractions [rows / seq_len, E], or null to count them from topk_idx.
template <typename T>
double moe_aux_loss_forward(const T* scores, const int32_t* topk_idx, int64_t rows, int64_t E, int64_t K,
                            int64_t seq_len, double alpha, const double* f = nullptr);
template <typename T>
void moe_aux_loss_backward(const T* scores, const int32_t* topk_idx, int64_t rows, int64_t E, int64_t K,
                           int64_t seq_len, double alpha, double grad_loss, T* grad_scores, const double* f = nullptr);
template <typename T>
double moe_z_loss_forward(const T* logits, int64_t rows, int64_t E, double coef);
template <typename T>
void moe_z_loss_backward(const T* logits, int64_t rows, int64_t E, double coef, double grad_loss, T* grad_logits);
}  // namespace ref

}  // namespace moelab
