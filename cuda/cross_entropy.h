// Launchers for softmax cross-entropy (core/ops/cross_entropy.h has the math and the contract).
// logits and grad_logits are f32 or bf16 as `bf16` says; targets i32; losses and lse f32. Every
// reduction runs in f32 within a row (one block per row, an online max / sum-exp over V in chunks
// of the block size, so any V works) and in double across rows, always in a fixed order: two runs
// give identical bits.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

// Device scratch the caller passes to the launchers that return a status (bytes, 8-byte aligned).
constexpr size_t kCrossEntropyWorkspaceBytes = 32;

// What the target scan found, copied back to the host (the launchers below synchronise `stream`).
struct CrossEntropyStatus {
  double loss_sum;     // sum of losses[n] over valid rows, in double, in a fixed order (0 from the scan alone)
  int64_t n_valid;     // rows whose target != ignore_index
  int64_t bad_row;     // first row whose target is neither ignore_index nor in [0, V); -1 when none
  int64_t bad_target;  // that row's target (undefined when bad_row < 0)
};

struct CrossEntropyForwardParams {
  const void* logits = nullptr;      // [rows, vocab]
  const int32_t* targets = nullptr;  // [rows]
  float* losses = nullptr;           // [rows], overwritten (0 for ignored rows; NaN for a bad target, see bad_row)
  float* lse = nullptr;              // [rows], overwritten
  void* workspace = nullptr;         // kCrossEntropyWorkspaceBytes of device memory
  int64_t rows = 0, vocab = 0;
  int ignore_index = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct CrossEntropyScanParams {
  const int32_t* targets = nullptr;  // [rows]
  void* workspace = nullptr;         // kCrossEntropyWorkspaceBytes of device memory
  int64_t rows = 0, vocab = 0;
  int ignore_index = 0;
  Stream stream = nullptr;
};

struct CrossEntropyBackwardParams {
  const void* logits = nullptr;      // [rows, vocab]
  const int32_t* targets = nullptr;  // [rows], every one ignore_index or in [0, vocab) (checked by the scan)
  const float* lse = nullptr;        // [rows]
  void* grad_logits = nullptr;       // [rows, vocab], overwritten
  int64_t rows = 0, vocab = 0;
  int ignore_index = 0;
  float scale = 0.0f;                // grad_loss / n_valid (0 when n_valid = 0), rounded to f32 by the caller
  bool bf16 = false;
  Stream stream = nullptr;
};

// losses, lse, then the scan with the loss sum; waits for the stream and returns the status.
CrossEntropyStatus cross_entropy_forward(const CrossEntropyForwardParams& p);
// The scan of the targets alone (loss_sum = 0); waits for the stream and returns the status.
CrossEntropyStatus cross_entropy_scan_targets(const CrossEntropyScanParams& p);
// grad_logits = scale * (softmax - onehot) on valid rows, 0 on ignored rows. Asynchronous.
void cross_entropy_backward(const CrossEntropyBackwardParams& p);

}  // namespace moelab::cuda
