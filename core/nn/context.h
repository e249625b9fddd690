// The per-forward context every layer receives: the execution context of its ops (core/exec.h:
// stream, cuBLASLt, device scratch), where activations come from (the step's arena), their dtype,
// and the batch structure (B sequences of T tokens; N = B*T rows everywhere).
//
// Precision (DESIGN.md): activations are `dtype` (CPU: f32, or f64 in gradient checks; CUDA: bf16
// in mixed-precision training, or f32); statistics that must stay in full precision (RMSNorm's
// rstd, attention and cross-entropy log-sum-exps, per-token losses, the router's logits, scores
// and weights) are `stat_dtype()`: f32, or f64 in gradient checks.
//
// The layer contract (DESIGN.md): forward(ctx, inputs..., outputs..., saved) fills caller-provided
// outputs and a caller-owned Saved struct with what backward needs; backward(ctx, saved,
// grad_out..., grad_in...) ACCUMULATES (+=) parameter gradients into the ParamBuffer and
// OVERWRITES (=) activation gradients. Saved tensors live in the arena until its next reset().
#pragma once

#include <cstdint>

#include "core/arena.h"
#include "core/exec.h"
#include "core/nn/grad_sync.h"
#include "core/ops/fp8_matmul.h"
#include "core/profile.h"
#include "core/tensor.h"

namespace moelab {

// An Exec (stream, gpu, scratch) plus the layers' own needs; scratch is `arena` on CUDA.
struct Context : Exec {
  Arena* arena = nullptr;
  DType dtype = DType::F32;  // activations: f32 or bf16 (training), f64 (gradient checks)
  int64_t batch = 0;         // B
  int64_t seq_len = 0;       // T
  Profiler* profiler = nullptr;     // phase timing (`moelab bench`); null: off
  // During a data-parallel training step: the processes sharing the batch, for the statistics a
  // forward must take over the whole batch (the batch-level balance loss). Null: this process's
  // batch is the batch.
  GradSync* data_parallel = nullptr;
  // FP8 training (core/ops/fp8_matmul.h): when enabled, every Linear's GEMMs (core/nn/linear.h).
  Fp8Recipe fp8;
  // The CPU's bf16 mixed precision (core/ops/bf16_matmul.h): the Linear and LM-head GEMMs on bf16
  // operands, with activations, statistics and the rest in f32 (core/nn/linear.h).
  bool cpu_bf16 = false;

  Context() = default;
  // gpu is required when the arena is on CUDA.
  Context(Arena* arena_, DType dtype_, int64_t batch_, int64_t seq_len_, const GpuContext* gpu_ = nullptr)
      : Exec{nullptr, gpu_, arena_}, arena(arena_), dtype(dtype_), batch(batch_), seq_len(seq_len_) {}

  int64_t tokens() const { return batch * seq_len; }  // N
  Device device() const { return arena->device(); }
  Tensor alloc(const Shape& shape) const { return arena->alloc(shape, dtype); }
  Tensor alloc(const Shape& shape, DType t) const { return arena->alloc(shape, t); }
  DType stat_dtype() const { return dtype == DType::F64 ? DType::F64 : DType::F32; }
  Tensor alloc_stat(const Shape& shape) const { return arena->alloc(shape, stat_dtype()); }
};

}  // namespace moelab
