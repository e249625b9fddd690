// Launcher for one AdamW step (core/ops/adamw.h has the math and the contract) over flat f32
// param, grad, m, v, with an optional converted copy of the updated param (f32 or bf16, rounded to
// nearest even): the bf16 compute copy of the fp32 master weights, written in the same pass.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct AdamwParams {
  float* param = nullptr;       // [n], updated in place
  const float* grad = nullptr;  // [n]
  float* m = nullptr;           // [n], updated in place
  float* v = nullptr;           // [n], updated in place
  void* param_copy = nullptr;   // [n] or nullptr: receives the updated param, f32 or bf16 as copy_bf16 says
  int64_t n = 0;
  // Scalars as the CPU reference rounds them to f32 (computed in double on the host):
  float decay = 0.0f;           // 1 - lr * weight_decay
  float beta1 = 0.0f, beta2 = 0.0f;
  float step_size = 0.0f;       // lr / (1 - beta1^t)
  float bc2_sqrt = 0.0f;        // sqrt(1 - beta2^t)
  float eps = 0.0f;
  bool copy_bf16 = false;
  Stream stream = nullptr;
};

void adamw_step(const AdamwParams& p);

}  // namespace moelab::cuda
