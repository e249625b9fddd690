// The execution context of an op (DESIGN.md, "The step and the execution context"): where its work
// runs and what it may use besides its tensors. Every op takes one first; a layer's Context is one
// (core/nn/context.h), so layers pass `ctx`. On the CPU a default Exec{} is all an op needs.
//   stream   CUDA: every launch of the op goes to this stream, in order (null: the default stream)
//   gpu      CUDA: the cuBLASLt context, which the matmuls need
//   scratch  CUDA: device scratch for ops that need temporaries (sort buffers, per-block partials,
//            counters). It is carved from the step's activation arena ABOVE its current top and
//            given back when the op returns (ScratchScope), so no op allocates device memory and
//            the arena's measured peak includes it. Reuse across ops is safe because the work of
//            one op is queued on `stream` before the next op's: the stream orders them.
//
// Where the host still waits for the device during a training step (each is counted by
// core/device.h's host_syncs, which `moelab bench --device cuda` prints per step):
//   - the expert row counts of every MoE layer (moe_dispatch_layout; moe_capacity_drop's count):
//     the grouped expert GEMMs are sized from them on the host;
//   - the values returned to the host: each loss head's cross-entropy sum and target check, the
//     balance losses, the loads of moe_count_tokens, the gradient norm;
//   - the one upload of the step's loads for the aux-loss-free bias update.
// The values could stay on the device until the log step (a device accumulator per statistic and
// one copy when logging); the row counts cannot without padded expert GEMMs.
#pragma once

#include "core/arena.h"
#include "core/check.h"
#include "core/gpu_context.h"
#include "cuda/stream.h"

namespace moelab {

struct Exec {
  cuda::Stream stream = nullptr;
  const GpuContext* gpu = nullptr;
  Arena* scratch = nullptr;
};

// An op's scratch: tensors taken from ex.scratch, all given back when the scope ends.
class ScratchScope {
 public:
  ScratchScope(const Exec& ex, const char* op) : arena_(ex.scratch), mark_(ex.scratch ? ex.scratch->used() : 0) {
    MOELAB_CHECK(arena_ != nullptr, op, ": needs device scratch, but the Exec has none (set Exec::scratch to an "
                 "arena on the op's device)");
  }
  ~ScratchScope() { arena_->rewind(mark_); }
  ScratchScope(const ScratchScope&) = delete;
  ScratchScope& operator=(const ScratchScope&) = delete;

  Tensor take(const Shape& shape, DType dtype) { return arena_->alloc(shape, dtype); }

 private:
  Arena* arena_;
  size_t mark_;
};

}  // namespace moelab
