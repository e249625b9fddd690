// Launcher for one AdamW step (core/ops/adamw.h has the math and the contract) over flat f32
// param, grad, m, v, with an optional converted copy of the updated param (f32 or bf16, rounded to
// nearest even): the bf16 compute copy of the fp32 master weights, written in the same pass.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct AdamwParams {
  float* param;        // [n], updated in place
  const float* grad;   // [n]
  float* m;            // [n], updated in place
  float* v;            // [n], updated in place
  void* param_copy;    // [n] or nullptr: receives the updated param, f32 or bf16 as copy_bf16 says
  int64_t n;
  // Scalars as the CPU reference rounds them to f32 (computed in double on the host):
  float decay;         // 1 - lr * weight_decay
  float beta1, beta2;
  float step_size;     // lr / (1 - beta1^t)
  float bc2_sqrt;      // sqrt(1 - beta2^t)
  float eps;
  bool copy_bf16;
  Stream stream;
};

void adamw_step(const AdamwParams& p);

}  // namespace moelab::cuda
