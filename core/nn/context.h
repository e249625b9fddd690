// The per-forward context every layer receives: where activations come from (the step's arena),
// their dtype, and the batch structure (B sequences of T tokens; N = B*T rows everywhere).
//
// The layer contract (DESIGN.md): forward(ctx, inputs..., outputs..., saved) fills caller-provided
// outputs and a caller-owned Saved struct with what backward needs; backward(ctx, saved,
// grad_out..., grad_in...) ACCUMULATES (+=) parameter gradients into the ParamBuffer and
// OVERWRITES (=) activation gradients. Saved tensors live in the arena until its next reset().
#pragma once

#include <cstdint>

#include "core/arena.h"
#include "core/tensor.h"

namespace moelab {

struct Context {
  Arena* arena = nullptr;
  DType dtype = DType::F32;  // activations: f32 (training on the CPU) or f64 (gradient checks)
  int64_t batch = 0;         // B
  int64_t seq_len = 0;       // T

  int64_t tokens() const { return batch * seq_len; }  // N
  Device device() const { return arena->device(); }
  Tensor alloc(const Shape& shape) const { return arena->alloc(shape, dtype); }
  Tensor alloc(const Shape& shape, DType t) const { return arena->alloc(shape, t); }
};

}  // namespace moelab
