#include "core/allocator.h"

#include <cstdlib>
#include <new>

#include "core/check.h"
#include "core/cuda_dispatch.h"
#if MOELAB_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace moelab {

void* CpuAllocator::allocate(size_t bytes) {
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;  // aligned_alloc rule
  void* p = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  MOELAB_CHECK(p != nullptr, "out of host memory allocating ", bytes, " bytes");
  return p;
}
void CpuAllocator::release(void* ptr) { std::free(ptr); }

void* CudaAllocator::allocate(size_t bytes) {
#if MOELAB_WITH_CUDA
  MOELAB_CHECK(cuda_available(), "CUDA tensor of ", bytes, " bytes requested but no GPU is visible");
  return cuda::malloc_device(bytes == 0 ? 256 : bytes);
#else
  (void)bytes;
  MOELAB_NO_CUDA("CudaAllocator::allocate");
#endif
}
void CudaAllocator::release(void* ptr) {
#if MOELAB_WITH_CUDA
  cuda::free_device(ptr);
#else
  (void)ptr;
#endif
}

int cuda_device_count() {
#if MOELAB_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

bool cuda_available() {
  static const bool available = cuda_device_count() > 0;  // a fact of the process, asked once
  return available;
}

}  // namespace moelab
