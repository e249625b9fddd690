// Launchers for softmax cross-entropy (core/ops/cross_entropy.h has the math and the contract).
// logits and grad_logits are f32 or bf16 as `bf16` says; targets i32; losses and lse f32. Every
// reduction runs in f32 within a row (one block per row, an online max / sum-exp over V in chunks
// of the block size, so any V works) and in double across rows, always in a fixed order: two runs
// give identical bits.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

// The forward's statistics, device f64 [4] (core/ops/cross_entropy.h): the loss sum over valid
// rows, n_valid, the first bad row (-1: none) and its target (0: none), all as doubles.
struct CrossEntropyForwardParams {
  const void* logits = nullptr;      // [rows, vocab]
  const int32_t* targets = nullptr;  // [rows]
  float* losses = nullptr;           // [rows], overwritten (0 for ignored rows; NaN for a bad target)
  float* lse = nullptr;              // [rows], overwritten
  double* stats = nullptr;           // device [4], overwritten
  int64_t rows = 0, vocab = 0;
  int ignore_index = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct CrossEntropyBackwardParams {
  const void* logits = nullptr;      // [rows, vocab]
  const int32_t* targets = nullptr;  // [rows]; a bad target gets no one-hot term (no write outside its row)
  const float* lse = nullptr;        // [rows]
  const double* stats = nullptr;     // device [4]: the forward's; n_valid is read on the device
  void* grad_logits = nullptr;       // [rows, vocab], overwritten
  int64_t rows = 0, vocab = 0;
  int ignore_index = 0;
  double grad_loss = 0.0;            // the scale is grad_loss / n_valid in double, rounded to f32 (the CPU's)
  bool bf16 = false;
  Stream stream = nullptr;
};

// losses, lse, then the scan that writes stats. Asynchronous.
void cross_entropy_forward(const CrossEntropyForwardParams& p);
// grad_logits = scale * (softmax - onehot) on valid rows, 0 on ignored rows. Asynchronous.
void cross_entropy_backward(const CrossEntropyBackwardParams& p);

}  // namespace moelab::cuda
