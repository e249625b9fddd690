// Launcher for the Philox fills of core/rng.h (same streams, same arithmetic as the CPU).
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct FillRandomParams {
  float* out = nullptr;     // [n]
  int64_t n = 0;
  uint64_t seed = 0;
  uint64_t offset = 0;      // stream index of out[0]
  double a = 0.0, b = 0.0;  // uniform: lo, hi; normal: mean, std
  bool normal = false;
  Stream stream = nullptr;
};

void fill_random_f32(const FillRandomParams& p);

}  // namespace moelab::cuda
