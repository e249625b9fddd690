// MoE routing (MODEL.md, "DeepSeekMoE"; the exact choices are tests/reference/GOLDEN.md's "Router"
// and "Capacity"): from the router scores s = sigmoid(logits) or softmax(logits), [N, E], choose K
// experts per token, compute their gate values, and apply the capacity limit.
//
//   moe_route_topk      selection score sel = s + b (b = the aux-loss-free bias, or none).
//                       Groups (n_group G > 1): experts split into G groups of E/G consecutive
//                       experts; group score = the sum of the group's group_topk best sel, summed
//                       best first; group_topk = 0 is Hugging Face's V2/V3 rule: its top-2 sel
//                       when there is a bias, else its max sel. The best topk_group groups are
//                       kept, every other expert's sel becomes -inf. topk_idx[n, :] = the K
//                       largest (masked) sel, largest first. Ties (groups and experts) go to the
//                       LOWER index; NaN ranks above every number (as torch.topk).
//                       Node-limited routing (DeepSeek-V3, M = max nodes per token) is this op
//                       with the nodes as groups, topk_group = M and group_topk = ceil(K / M).
//   moe_gate_forward    g_k = s[n, topk_idx[n, k]] (the UNBIASED score: the bias only steers the
//                       selection); if norm_topk_prob g_k /= (sum_k' s[n, topk_idx[n, k']] + 1e-20);
//                       then g_k *= scale (routed_scaling_factor).
//   moe_gate_backward   with S = sum_k s_k + 1e-20 and r = scale (S = 1, no eps, without the norm):
//                       grad_s[n, topk_idx[n, j]] = (r / S) * (grad_g_j - sum_k grad_g_k * s_k / S)
//                                               (= r * grad_g_j without the norm),
//                       grad_s = 0 for the E - K experts not selected: gradients reach the router
//                       only through the gate values.
//   moe_capacity_drop   cap = capacity per expert. Each expert keeps the `cap` of its assignments
//                       with the highest unbiased s[n, e] (ties: lower token n) and drops the rest:
//                       kept_idx = topk_idx with dropped entries set to -1. Returns the number
//                       dropped. The gates are NOT renormalised over the kept ones.
//   moe_capacity        cap = ceil(c * N * K / E), computed in double (c > 0; c = 0 is dropless).
//   moe_count_tokens    counts[e] = selections of expert e (entries of topk_idx equal to e; -1 is
//                       skipped), as f64 [E]: the step accumulates them on the device
//                       (core/ops/step_stats.h).
//
// Shapes: scores, grad_scores: [N, E]   bias: [E] or undefined (no bias)
//         n_group divides E; 1 <= topk_group <= n_group; topk_group * E / n_group >= K;
//         0 <= group_topk <= E / n_group (group_topk = 0 with a bias and n_group > 1: E / n_group >= 2)
//         topk_idx, kept_idx: i32 [N, K]   topk_weights, grad_topk_weights: [N, K], 1 <= K <= E
// Contract: every output is OVERWRITTEN (grad_scores entirely, zeros included).
// Dtypes: CPU: scores, bias, topk_weights and their gradients all f32 or all f64; indices i32.
//         CUDA: the same tensors all f32; indices i32. On CUDA the indices are not read on the host
//         (no device-to-host copy per call): a topk_idx entry out of range turns its row of
//         topk_weights / grad_scores into NaN, and every count of moe_count_tokens into NaN;
//         moe_capacity_drop, which copies its counts to the host anyway, throws. (The CPU checks
//         the indices and throws.) Limits: n_group <= 1024; E <= 8192 (drop, count).
//         The CUDA moe_capacity_drop and moe_count_tokens take a small device workspace (counters,
//         and for the drop the assignments grouped by expert) from ex.scratch (core/exec.h).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

// The epsilon of norm_topk_prob's denominator (HF DeepSeek-V3's value; GOLDEN.md).
constexpr double kMoeNormEps = 1e-20;

void moe_route_topk(const Exec& ex, const Tensor& scores, const Tensor& bias, int64_t n_group, int64_t topk_group,
                    int64_t group_topk, const Tensor& topk_idx);
void moe_gate_forward(const Exec& ex, const Tensor& scores, const Tensor& topk_idx, bool norm_topk_prob, double scale,
                      const Tensor& topk_weights);
void moe_gate_backward(const Exec& ex, const Tensor& grad_topk_weights, const Tensor& scores, const Tensor& topk_idx,
                       bool norm_topk_prob, double scale, const Tensor& grad_scores);
int64_t moe_capacity(double capacity_factor, int64_t tokens, int64_t k, int64_t num_experts);
int64_t moe_capacity_drop(const Exec& ex, const Tensor& scores, const Tensor& topk_idx, int64_t capacity,
                          const Tensor& kept_idx);
void moe_count_tokens(const Exec& ex, const Tensor& topk_idx, const Tensor& counts);

namespace ref {
// bias may be nullptr (no bias). The references trust their indices (the Tensor API checks them).
template <typename T>
void moe_route_topk(const T* scores, const T* bias, int32_t* topk_idx, int64_t rows, int64_t E, int64_t K,
                    int64_t n_group, int64_t topk_group, int64_t group_topk);
template <typename T>
void moe_gate_forward(const T* scores, const int32_t* topk_idx, bool norm_topk_prob, T scale, T* topk_weights,
                      int64_t rows, int64_t E, int64_t K);
template <typename T>
void moe_gate_backward(const T* grad_topk_weights, const T* scores, const int32_t* topk_idx, bool norm_topk_prob,
                       T scale, T* grad_scores, int64_t rows, int64_t E, int64_t K);
template <typename T>
int64_t moe_capacity_drop(const T* scores, const int32_t* topk_idx, int64_t capacity, int32_t* kept_idx,
                          int64_t rows, int64_t E, int64_t K);
}  // namespace ref

}  // namespace moelab
