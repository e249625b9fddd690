// How a training step shares gradients with the other processes of a data-parallel run (DESIGN.md,
// "Distributed"). Declared here, below dist/, so that the Model's backward can announce finished
// gradients and train/step can run the reduction without core/ knowing MPI or NCCL; dist/'s
// DataParallel implements it, and one process passes none.
//
// The flat gradient buffer (core/params.h) fills from its END: backward runs the MTP modules and the
// loss head first, then the blocks in reverse, then the embedding, and parameters are laid out in
// the opposite order. So "the gradients at [offset, numel_padded) are final" is one number that only
// falls during a backward, and a reduction of the buffer's tail can start while backward still
// computes the rest: that is the overlap.
//
// One step with a GradSync (train/step.cpp):
//   last micro-batch's backward -> grads_ready(offset) at each finished layer, then grads_ready(0)
//   -> finish_grads(): every bucket reduced; the gradients of owned() are the mean over ranks
//   -> the norm over owned() with sum() over ranks, clipping, the optimizer on owned()
//   -> gather_params(): every rank's parameters whole and identical again
#pragma once

#include <cstdint>
#include <vector>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

// [begin, end) in elements of the flat parameter buffer.
struct FlatRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

// A range a rank updates, and how many ranks hold the same reduced gradient for it and update it
// identically: the global norm counts it once (a replicated range: every rank; a ZeRO-1 slice: 1;
// a routed expert under expert parallelism: the ranks that hold that expert).
struct OwnedRange : FlatRange {
  int copies = 1;
};
inline std::vector<FlatRange> as_flat(const std::vector<OwnedRange>& owned) {
  return std::vector<FlatRange>(owned.begin(), owned.end());
}

class GradSync {
 public:
  virtual ~GradSync() = default;
  // During the step's last backward: the gradients at [offset, numel_padded) will not change again.
  virtual void grads_ready(const Exec& ex, int64_t offset) = 0;
  // After the last backward: waits for every reduction (the time it waits is the exposed
  // communication). Afterwards the gradients of owned() hold the mean over ranks.
  virtual void finish_grads(const Exec& ex) = 0;
  // The flat ranges this rank updates, sorted by offset: the whole buffer, its ZeRO-1 shard, and
  // under expert parallelism only the experts this rank holds.
  virtual const std::vector<OwnedRange>& owned() const = 0;
  // Sums values over the ranks, in place (norms, flags, statistics).
  virtual void sum(std::vector<double>& values) = 0;
  // The same for f64 values on the model's device, in place (the step's statistics): on the GPU
  // they never come to the host.
  virtual void sum(const Exec& ex, const Tensor& values) = 0;
  // After the optimizer updated owned(): every rank receives the others' updated parameters
  // (nothing to do when every rank updates everything).
  virtual void gather_params(const Exec& ex) = 0;
  virtual int ranks() const = 0;
};

}  // namespace moelab
