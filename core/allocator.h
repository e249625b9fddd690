// The two allocators behind Storage. CPU blocks are 64-byte aligned (a cache line, an AVX-512
// vector); CUDA blocks come from cudaMalloc (256-byte aligned, what cuBLASLt wants).
// In a build without CUDA, CudaAllocator throws a moelab::Error that says so.
#pragma once

#include <cstddef>

namespace moelab {

struct CpuAllocator {
  static constexpr size_t kAlignment = 64;
  static void* allocate(size_t bytes);
  static void release(void* ptr);
};

struct CudaAllocator {
  static void* allocate(size_t bytes);
  static void release(void* ptr);
};

// True when this build has the CUDA backend AND a GPU is visible now (cached after the first call).
bool cuda_available();
// Visible GPUs (0 without CUDA in the build, without a driver or without a device).
int cuda_device_count();

}  // namespace moelab
