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
// Where the host waits for the device during a training step (each is counted by core/device.h's
// host_syncs, which `moelab bench --device cuda` prints per step):
//   - the expert row counts of every MoE layer (moe_dispatch_layout; moe_capacity_drop's count):
//     the grouped expert GEMMs are sized from them on the host, which only padded expert GEMMs
//     (a fixed number of rows per expert) would avoid;
//   - the step's verdict (train/step.h): the total loss and the first bad target, one 32-byte copy,
//     and the gradient norm: the host decides whether to apply the update and how to clip;
//   - with data parallelism and the batch-level balance loss (aux_loss_alpha > 0), each MoE layer's
//     loads, summed over the processes on the host before its loss.
// Everything else a step measures (each head's cross-entropy, the balance losses, the loads, the
// bias update's input) stays on the device in the step's statistics (core/ops/step_stats.h) until
// the log step reads them.
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
