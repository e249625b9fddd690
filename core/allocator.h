// The two allocators behind Storage. Blocks on both devices are 256-byte aligned: cudaMalloc gives that, and the
// CPU matches it so that a flat buffer's layout rules (core/params.h) are the same on both.
// Without a GPU (or without CUDA in the build), CudaAllocator throws a moelab::Error that says which.
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

}  // namespace moelab
