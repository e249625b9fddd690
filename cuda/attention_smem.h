// Host-side helper shared by the attention kernels' launchers (cuda/attention*.cu, mla_decode.cu):
// kernels whose dynamic shared memory grows with the head dims must opt in above the default 48 KiB
// per block, and must fail with a readable message (not a bare launch error) beyond the device's
// limit (227 KiB on an H100).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <stdexcept>
#include <string>

#include "cuda/check.h"

namespace moelab::cuda {

constexpr size_t kDefaultDynamicSmem = 48 * 1024;  // what any kernel may use without opting in

template <typename Kernel>
void ensure_dynamic_smem(Kernel* kernel, size_t bytes, const char* what) {
  if (bytes <= kDefaultDynamicSmem) return;
  int device = 0, max_optin = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  if (bytes > static_cast<size_t>(max_optin))
    throw std::invalid_argument(std::string(what) + ": needs " + std::to_string(bytes) +
                                " bytes of shared memory per block, the device allows " + std::to_string(max_optin));
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

}  // namespace moelab::cuda
