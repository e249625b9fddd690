// The per-step activation arena (DESIGN.md): one allocation made at start-up, handed out by a bump
// pointer during a step and reset at the start of the next, so memory is constant for the whole
// run and the budget is known (and printed) before training starts.
// Tensors from alloc() are views into the arena: they are valid until the next reset().
#pragma once

#include <cstddef>
#include <memory>

#include "core/tensor.h"

namespace moelab {

class Arena {
 public:
  static constexpr size_t kAlignment = 256;  // cuBLASLt's preferred pointer alignment

  Arena(size_t capacity_bytes, Device device);

  // A tensor of `shape` from the arena; throws, naming the request, the use and the capacity, when
  // it does not fit.
  Tensor alloc(const Shape& shape, DType dtype);
  void reset() { used_ = 0; }
  // Gives back everything allocated since used() was `mark` (an op's scratch: core/exec.h).
  void rewind(size_t mark) {
    MOELAB_CHECK(mark <= used_, "Arena::rewind to ", mark, " bytes, but only ", used_, " are in use");
    used_ = mark;
  }

  size_t used() const { return used_; }
  size_t peak() const { return peak_; }  // the most bytes ever in use: what a run really needs
  size_t capacity() const { return storage_->bytes(); }
  Device device() const { return storage_->device(); }

 private:
  std::shared_ptr<Storage> storage_;
  size_t used_ = 0;
  size_t peak_ = 0;
};

}  // namespace moelab
