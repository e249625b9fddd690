// Launchers for sigmoid and softmax (core/ops/activation.h has the math and the contract). Every
// tensor of one call is f32 or every tensor is bf16 as `bf16` says (the router calls them on f32
// logits and scores); all arithmetic is f32.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct SigmoidForwardParams {
  const void* x = nullptr;  // [n]
  void* y = nullptr;        // [n], overwritten
  int64_t n = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct SigmoidBackwardParams {
  const void* grad_y = nullptr;  // [n]
  const void* y = nullptr;       // [n], the saved forward output
  void* grad_x = nullptr;        // [n], overwritten
  int64_t n = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

// Softmax over the last dim: rows of `cols` elements.
struct SoftmaxForwardParams {
  const void* x = nullptr;  // [rows, cols]
  void* y = nullptr;        // [rows, cols], overwritten
  int64_t rows = 0, cols = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct SoftmaxBackwardParams {
  const void* grad_y = nullptr;  // [rows, cols]
  const void* y = nullptr;       // [rows, cols], the saved forward output
  void* grad_x = nullptr;        // [rows, cols], overwritten
  int64_t rows = 0, cols = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

void sigmoid_forward(const SigmoidForwardParams& p);
void sigmoid_backward(const SigmoidBackwardParams& p);
void softmax_forward(const SoftmaxForwardParams& p);
void softmax_backward(const SoftmaxBackwardParams& p);

}  // namespace moelab::cuda
