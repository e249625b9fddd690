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

// For ops that may write in place: `out` is either `in` itself (same storage, offset, size) or
// memory disjoint from it. A partial overlap would make the result depend on the order in which
// elements are written (a race on the GPU), so it is an error naming both tensors.
inline void check_in_place_or_disjoint(const char* op, const char* in_name, const Tensor& in, const char* out_name,
                                       const Tensor& out) {
  if (in.storage() != out.storage()) return;
  const size_t a = in.byte_offset(), b = out.byte_offset();
  if (a == b && in.nbytes() == out.nbytes()) return;
  MOELAB_CHECK(a + in.nbytes() <= b || b + out.nbytes() <= a, op, ": ", out_name, " ", out.str(), " partly overlaps ",
               in_name, " ", in.str(), "; pass the same tensor for in-place or disjoint memory");
}

// Number of rows when the last dim of t is `dim` ([..., dim] -> numel / dim).
inline int64_t rows_of(const Tensor& t) { return t.ndim() ? t.numel() / (t.size(-1) ? t.size(-1) : 1) : 1; }

}  // namespace moelab::ops_detail
