// Launchers for RMSNorm (core/ops/rmsnorm.h has the math and the contract). The activations
// (x, y, grad_y, grad_x) are f32 or bf16 as `bf16` says; weight, rstd, grad_weight are f32; every
// reduction runs in f32.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct RmsnormForwardParams {
  const void* x = nullptr;        // [rows, dim]
  const float* weight = nullptr;  // [dim]
  void* y = nullptr;              // [rows, dim]
  float* rstd = nullptr;          // [rows]
  int64_t rows = 0, dim = 0;
  float eps = 0.0f;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct RmsnormBackwardParams {
  const void* grad_y = nullptr;   // [rows, dim]
  const void* x = nullptr;        // [rows, dim]
  const float* weight = nullptr;  // [dim]
  const float* rstd = nullptr;    // [rows]
  void* grad_x = nullptr;         // [rows, dim], overwritten
  float* grad_weight = nullptr;   // [dim], accumulated (+=), in a fixed order: deterministic
  int64_t rows = 0, dim = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

void rmsnorm_forward(const RmsnormForwardParams& p);
void rmsnorm_backward(const RmsnormBackwardParams& p);

}  // namespace moelab::cuda
