// Launchers for the elementwise ops (core/ops/elementwise.h has the math and the contract):
// add (out = a + b), axpy (y += alpha * x) and cast (f32 <-> bf16). The operands of add and axpy
// are all f32 or all bf16 as `bf16` says and are computed in f32; out (add) and y (axpy) may be
// the very same memory as an input: each element is read and then written by one thread.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct AddParams {
  const void* a = nullptr;  // [n]
  const void* b = nullptr;  // [n]
  void* out = nullptr;      // [n], overwritten; may be a or b
  int64_t n = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct AxpyParams {
  float alpha = 0.0f;
  const void* x = nullptr;  // [n]
  void* y = nullptr;        // [n], accumulated (+=); may be x
  int64_t n = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

// y = x converted elementwise, each side f32 or bf16 (f32 -> bf16 rounds to nearest even;
// bf16 -> f32 is exact). x and y must not overlap unless they are the same memory of one dtype.
struct CastParams {
  const void* x = nullptr;  // [n]
  void* y = nullptr;        // [n], overwritten
  int64_t n = 0;
  bool x_bf16 = false, y_bf16 = false;
  Stream stream = nullptr;
};

void add(const AddParams& p);
void axpy(const AxpyParams& p);
void cast(const CastParams& p);

}  // namespace moelab::cuda
