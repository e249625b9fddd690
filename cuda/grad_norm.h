// Launchers for the global gradient norm and clipping (core/ops/grad_norm.h has the contract) on
// flat f32 tensors. The sum of squares accumulates in DOUBLE, in a fixed two-pass order: a fixed
// grid of kGradNormBlocks blocks (independent of the device) writes one partial per block, each
// thread striding over the tensor and the block reducing in a fixed tree; then one block adds the
// partials in a fixed tree. Two runs give identical bits.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

constexpr int kGradNormBlocks = 1024;  // the fixed grid of the first pass (= partials per tensor)

struct GradSumSquaresParams {
  const float* x = nullptr;     // [n]
  int64_t n = 0;
  double* partials = nullptr;   // kGradNormBlocks doubles of device scratch
  double* result = nullptr;     // one device double: sum_i x_i^2
  Stream stream = nullptr;
};

struct GradScaleParams {
  float* x = nullptr;           // [n], scaled in place
  int64_t n = 0;
  float factor = 0.0f;
  Stream stream = nullptr;
};

void grad_sum_squares(const GradSumSquaresParams& p);  // asynchronous: *result is on the device
void grad_scale(const GradScaleParams& p);

}  // namespace moelab::cuda
