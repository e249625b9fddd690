// Launchers for top-k over the last dim (core/ops/topk.h has the order, the tie rules and the
// contract). x, values, grad_values, grad_x are f32; indices i32.
// Indices are not read on the host: in backward an index outside [0, E) is never followed out of
// bounds; it turns its row of grad_x into NaN.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct TopkForwardParams {
  const float* x = nullptr;    // [rows, E]
  float* values = nullptr;     // [rows, K]
  int32_t* indices = nullptr;  // [rows, K]
  int64_t rows = 0, E = 0, K = 0;
  Stream stream = nullptr;
};

struct TopkBackwardParams {
  const float* grad_values = nullptr;  // [rows, K]
  const int32_t* indices = nullptr;    // [rows, K]
  float* grad_x = nullptr;             // [rows, E], overwritten (zeros included)
  int64_t rows = 0, E = 0, K = 0;
  Stream stream = nullptr;
};

void topk_forward(const TopkForwardParams& p);
void topk_backward(const TopkBackwardParams& p);

}  // namespace moelab::cuda
