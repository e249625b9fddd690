// Launchers for top-k over the last dim (core/ops/topk.h has the order, the tie rules and the
// contract). x, values, grad_values, grad_x are f32; indices i32.
// Indices are not read on the host: in backward an index outside [0, E) is never followed out of
// bounds; it turns its row of grad_x into NaN.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct TopkForwardParams {
  const float* x;    // [rows, E]
  float* values;     // [rows, K]
  int32_t* indices;  // [rows, K]
  int64_t rows, E, K;
  Stream stream;
};

struct TopkBackwardParams {
  const float* grad_values;  // [rows, K]
  const int32_t* indices;    // [rows, K]
  float* grad_x;             // [rows, E], overwritten (zeros included)
  int64_t rows, E, K;
  Stream stream;
};

void topk_forward(const TopkForwardParams& p);
void topk_backward(const TopkBackwardParams& p);

}  // namespace moelab::cuda
