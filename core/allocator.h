// The two allocators behind Storage. Blocks on both devices are 256-byte aligned: cudaMalloc gives that, and the
// CPU matches it so that a flat buffer's layout rules (core/params.h) are the same on both.
// In a build without CUDA, CudaAllocator throws a moelab::Error that says so.
#pragma once

#include <cstddef>

namespace moelab {

struct CpuAllocator {
  static constexpr size_t kAlignment = 256;
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
