// Launcher for the Philox fills of core/rng.h (same streams, same arithmetic as the CPU).
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct FillRandomParams {
  float* out;       // [n]
  int64_t n;
  uint64_t seed;
  uint64_t offset;  // stream index of out[0]
  double a, b;      // uniform: lo, hi; normal: mean, std
  bool normal;
  Stream stream;
};

void fill_random_f32(const FillRandomParams& p);

}  // namespace moelab::cuda
