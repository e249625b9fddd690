#include "core/arena.h"

#include <algorithm>

namespace moelab {

Arena::Arena(size_t capacity_bytes, Device device)
    : storage_(std::make_shared<Storage>(capacity_bytes, device)) {}

Tensor Arena::alloc(const Shape& shape, DType dtype) {
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  const size_t start = (used_ + kAlignment - 1) / kAlignment * kAlignment;
  MOELAB_CHECK(start + bytes <= capacity(), "activation arena full: ", dtype_name(dtype), shape.str(), " needs ", bytes,
               " bytes, ", used_, " of ", capacity(), " are in use (raise the arena size)");
  used_ = start + bytes;
  peak_ = std::max(peak_, used_);
  return Tensor::view_of(storage_, start, shape, dtype);
}

}  // namespace moelab
