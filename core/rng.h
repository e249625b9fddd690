// Random initialisation that is identical on every device, thread count and rank.
// Element i of a fill draws from the counter-based Philox stream at index (offset + i) with the
// given seed (cuda/philox.h defines the streams), so a parameter's initial values depend only on
// the seed and where it sits in the flat buffer: never on the device or on the order of fills.
// Uniform draws have 24 random bits; normal draws use Box-Muller (tails cut at about 5.8 sigma).
#pragma once

#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace moelab {

// t (f32 or f64 on the CPU, f32 on CUDA) <- lo + (hi - lo) * U[0, 1)
void fill_uniform(const Tensor& t, uint64_t seed, uint64_t offset, float lo, float hi);
// t (f32 or f64 on the CPU, f32 on CUDA) <- mean + std * N(0, 1), computed in double
void fill_normal(const Tensor& t, uint64_t seed, uint64_t offset, double mean, double std);

// The same generator for the floors above core/ (they do not include cuda/philox.h):
// element g of the uniform stream, the value fill_uniform(t, seed, g, 0, 1) puts in t[0] (sampling);
float uniform_at(uint64_t seed, uint64_t g);
// and the raw 128-bit block at counter (lo, hi words), word 2 = stream, word 3 = extra. Streams 0
// and 1 are the fills'; other users take their own (the loader: 2 and 3).
std::array<uint32_t, 4> philox_block(uint64_t seed, uint64_t counter, uint32_t stream, uint32_t extra);

}  // namespace moelab
