// Launcher for the aux-loss-free bias update (core/ops/moe_bias.h has the math and the contract):
//   b_i += speed * sign(mean(load) - load_i),   sign(0) = 0
// load is f64 [E] (counts), bias f32 [E]. The mean is summed in double in index order, as the CPU reference
// does, so the GPU moves exactly the experts the CPU moves, by exactly the same step.
// Asynchronous: nothing is copied back.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct MoeBiasUpdateParams {
  const double* load = nullptr;  // [E]: tokens per expert over the global batch
  float* bias = nullptr;        // [E], updated in place
  int64_t E = 0;
  float speed = 0.0f;           // gamma, rounded to f32 by the caller as the CPU reference rounds it
  Stream stream = nullptr;
};

void moe_bias_update(const MoeBiasUpdateParams& p);

}  // namespace moelab::cuda
