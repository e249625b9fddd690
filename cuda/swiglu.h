// Launchers for SwiGLU (core/ops/swiglu.h has the math and the contract): elementwise over n
// elements; every tensor f32 or every tensor bf16 as `bf16` says, computed in f32.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct SwigluForwardParams {
  const void* gate = nullptr;  // [n]
  const void* up = nullptr;    // [n]
  void* out = nullptr;         // [n], overwritten
  int64_t n = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct SwigluBackwardParams {
  const void* grad_out = nullptr;  // [n]
  const void* gate = nullptr;      // [n]
  const void* up = nullptr;        // [n]
  void* grad_gate = nullptr;       // [n], overwritten
  void* grad_up = nullptr;         // [n], overwritten
  int64_t n = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

void swiglu_forward(const SwigluForwardParams& p);
void swiglu_backward(const SwigluBackwardParams& p);

}  // namespace moelab::cuda
