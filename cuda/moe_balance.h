// Launchers for the MoE balance losses (core/ops/moe_balance.h has the math and the contract).
// scores, logits and their gradients are f32, topk_idx i32. The forwards reduce on the device in a
// fixed order (per-row values, then one block sums them in f64) and write the loss, scaled, into
// a device double: asynchronous, nothing comes back to the host. Indices are not read on the host:
// an index outside [0, E) is counted, never followed out of bounds; the aux-loss forward's loss is
// then NaN, and the backward adds NaN to the gradient rows of that sequence.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

// The per-sequence expert histogram lives in shared memory (one i32 per expert).
constexpr int64_t kMoeBalanceMaxExperts = 8192;

struct MoeAuxLossParams {
  const float* scores = nullptr;      // [rows, E]
  const int32_t* topk_idx = nullptr;  // [rows, K]
  int64_t rows = 0, E = 0, K = 0, seq_len = 0;
  float* f = nullptr;                 // device workspace [rows / seq_len, E]: f_{b,i}
  bool f_given = false;               // f already holds the batch's fractions (one sequence): no histogram
  int32_t* invalid = nullptr;         // device workspace [rows / seq_len]: out-of-range indices per sequence
  float* row_values = nullptr;        // device workspace [rows] (forward only): sum_i f_{b,i} s_{t,i} / Z_t
  double* loss = nullptr;             // device [1] (forward only): alpha * sum_t row_values / loss_denominator,
                                      // NaN when an index was out of range
  double loss_denominator = 1.0;      // forward only: B * seq_len, in double (the CPU's expression)
  double alpha = 0.0, grad_loss = 0.0;  // grad_loss: backward only
  float* grad_scores = nullptr;       // [rows, E], accumulated (+=) (backward only)
  Stream stream = nullptr;
};

void moe_aux_loss_forward(const MoeAuxLossParams& p);
void moe_aux_loss_backward(const MoeAuxLossParams& p);

struct MoeZLossParams {
  const float* logits = nullptr;      // [rows, E]
  int64_t rows = 0, E = 0;
  float* row_values = nullptr;        // device workspace [rows] (forward only): lse_t^2
  double* loss = nullptr;             // device [1] (forward only): coef * sum_t lse_t^2 / rows
  double coef = 0.0, grad_loss = 0.0;  // grad_loss: backward only
  float* grad_logits = nullptr;       // [rows, E], accumulated (+=) (backward only)
  Stream stream = nullptr;
};

void moe_z_loss_forward(const MoeZLossParams& p);
void moe_z_loss_backward(const MoeZLossParams& p);

}  // namespace moelab::cuda
