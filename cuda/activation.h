// Launchers for sigmoid and softmax (core/ops/activation.h has the math and the contract). Every
// tensor of one call is f32 or every tensor is bf16 as `bf16` says (the router calls them on f32
// logits and scores); all arithmetic is f32.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct SigmoidForwardParams {
  const void* x;  // [n]
  void* y;        // [n], overwritten
  int64_t n;
  bool bf16;
  Stream stream;
};

struct SigmoidBackwardParams {
  const void* grad_y;  // [n]
  const void* y;       // [n], the saved forward output
  void* grad_x;        // [n], overwritten
  int64_t n;
  bool bf16;
  Stream stream;
};

// Softmax over the last dim: rows of `cols` elements.
struct SoftmaxForwardParams {
  const void* x;  // [rows, cols]
  void* y;        // [rows, cols], overwritten
  int64_t rows, cols;
  bool bf16;
  Stream stream;
};

struct SoftmaxBackwardParams {
  const void* grad_y;  // [rows, cols]
  const void* y;       // [rows, cols], the saved forward output
  void* grad_x;        // [rows, cols], overwritten
  int64_t rows, cols;
  bool bf16;
  Stream stream;
};

void sigmoid_forward(const SigmoidForwardParams& p);
void sigmoid_backward(const SigmoidBackwardParams& p);
void softmax_forward(const SoftmaxForwardParams& p);
void softmax_backward(const SoftmaxBackwardParams& p);

}  // namespace moelab::cuda
