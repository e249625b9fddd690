// Launchers for SwiGLU (core/ops/swiglu.h has the math and the contract): elementwise over n
// elements; every tensor f32 or every tensor bf16 as `bf16` says, computed in f32.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct SwigluForwardParams {
  const void* gate;  // [n]
  const void* up;    // [n]
  void* out;         // [n], overwritten
  int64_t n;
  bool bf16;
  Stream stream;
};

struct SwigluBackwardParams {
  const void* grad_out;  // [n]
  const void* gate;      // [n]
  const void* up;        // [n]
  void* grad_gate;       // [n], overwritten
  void* grad_up;         // [n], overwritten
  int64_t n;
  bool bf16;
  Stream stream;
};

void swiglu_forward(const SwigluForwardParams& p);
void swiglu_backward(const SwigluBackwardParams& p);

}  // namespace moelab::cuda
