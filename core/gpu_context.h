// The per-run GPU state that ops need beyond their tensors (DESIGN.md: "No globals: handles live in
// a context object passed down"): today the cuBLASLt context of cuda/blas.h (handle, 32 MiB
// workspace, cached matmul plans). Whoever runs a model on CUDA (trainer, bench, sample, tests)
// creates one and hands it down through Context::gpu; matmul_forward/backward take it explicitly.
// Kernels other than GEMMs run on the default stream and need nothing from here.
// In a build without CUDA, constructing one throws a moelab::Error that says so.
#pragma once

#include <memory>

namespace moelab {

namespace cuda {
class Blas;
}  // namespace cuda

class GpuContext {
 public:
  GpuContext();  // on the current CUDA device
  ~GpuContext();
  GpuContext(const GpuContext&) = delete;
  GpuContext& operator=(const GpuContext&) = delete;

  cuda::Blas& blas() const { return *blas_; }

 private:
  std::unique_ptr<cuda::Blas> blas_;
};

}  // namespace moelab
