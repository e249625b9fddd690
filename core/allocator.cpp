#include "core/allocator.h"

#include <cstdlib>
#include <new>

#include "core/check.h"
#include "core/device.h"
#include "cuda/runtime.h"

namespace moelab {

void* CpuAllocator::allocate(size_t bytes) {
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;  // aligned_alloc rule
  void* p = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  MOELAB_CHECK(p != nullptr, "out of host memory allocating ", bytes, " bytes");
  return p;
}
void CpuAllocator::release(void* ptr) { std::free(ptr); }

void* CudaAllocator::allocate(size_t bytes) {
  MOELAB_CHECK(cuda_available(), "CUDA tensor of ", bytes, " bytes requested but ", no_cuda_reason());
  return cuda::malloc_device(bytes == 0 ? 256 : bytes);
}
void CudaAllocator::release(void* ptr) { cuda::free_device(ptr); }

}  // namespace moelab
