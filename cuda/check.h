// Error checks for cuda/ (which includes nothing of moelab's own): every CUDA runtime and cuBLAS
// call goes through CUDA_CHECK / CUBLAS_CHECK, every kernel launch is followed by
// CUDA_CHECK_LAUNCH(). Failures throw moelab::cuda::CudaError (a std::runtime_error) with
// file:line, the failed expression and CUDA's own error string.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace moelab::cuda {

class CudaError : public std::runtime_error {
 public:
  explicit CudaError(const std::string& what) : std::runtime_error(what) {}
};

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* expr, const char* file, int line) {
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                  cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* expr, const char* file, int line) {
  throw CudaError(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: cuBLAS status " +
                  std::to_string(static_cast<int>(status)) + " (" + cublasLtGetStatusString(status) + ")");
}

}  // namespace moelab::cuda

#define CUDA_CHECK(expr)                                                              \
  do {                                                                                \
    cudaError_t moelab_err_ = (expr);                                                 \
    if (moelab_err_ != cudaSuccess)                                                   \
      ::moelab::cuda::throw_cuda_error(moelab_err_, #expr, __FILE__, __LINE__);       \
  } while (0)

// After every <<<...>>>: reports launch-configuration errors at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())

#define CUBLAS_CHECK(expr)                                                            \
  do {                                                                                \
    cublasStatus_t moelab_status_ = (expr);                                           \
    if (moelab_status_ != CUBLAS_STATUS_SUCCESS)                                      \
      ::moelab::cuda::throw_cublas_error(moelab_status_, #expr, __FILE__, __LINE__);  \
  } while (0)
