// Helpers shared by the op files: choosing the CPU reference's scalar type from a tensor dtype.
#pragma once

#include "core/tensor.h"

namespace moelab::ops_detail {

// Calls fn(float{}) or fn(double{}) for an f32 or f64 CPU tensor; anything else is an error that
// names the op (the CPU references are the specification and run in f32, or f64 for checks).
template <typename Fn>
void dispatch_cpu_float(const char* op, const Tensor& t, Fn&& fn) {
  if (t.dtype() == DType::F32) fn(float{});
  else if (t.dtype() == DType::F64) fn(double{});
  else MOELAB_FAIL(op, ": the CPU reference takes f32 or f64 tensors, got ", t.str());
}

// Number of rows when the last dim of t is `dim` ([..., dim] -> numel / dim).
inline int64_t rows_of(const Tensor& t) { return t.ndim() ? t.numel() / (t.size(-1) ? t.size(-1) : 1) : 1; }

}  // namespace moelab::ops_detail
