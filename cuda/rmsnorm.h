// Launchers for RMSNorm (core/ops/rmsnorm.h has the math and the contract). The activations
// (x, y, grad_y, grad_x) are f32 or bf16 as `bf16` says; weight, rstd, grad_weight are f32; every
// reduction runs in f32.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct RmsnormForwardParams {
  const void* x;         // [rows, dim]
  const float* weight;   // [dim]
  void* y;               // [rows, dim]
  float* rstd;           // [rows]
  int64_t rows, dim;
  float eps;
  bool bf16;
  Stream stream;
};

struct RmsnormBackwardParams {
  const void* grad_y;    // [rows, dim]
  const void* x;         // [rows, dim]
  const float* weight;   // [dim]
  const float* rstd;     // [rows]
  void* grad_x;          // [rows, dim], overwritten
  float* grad_weight;    // [dim], accumulated (+=), in a fixed order: deterministic
  int64_t rows, dim;
  bool bf16;
  Stream stream;
};

void rmsnorm_forward(const RmsnormForwardParams& p);
void rmsnorm_backward(const RmsnormBackwardParams& p);

}  // namespace moelab::cuda
