#include "core/gpu_context.h"

#include "core/device.h"
#include "core/check.h"
#include "cuda/blas.h"

namespace moelab {

GpuContext::GpuContext() {
  MOELAB_CHECK(cuda_available(), "GpuContext: ", no_cuda_reason(), "; use --device cpu");
  blas_ = std::make_unique<cuda::Blas>();
}

GpuContext::~GpuContext() = default;

}  // namespace moelab
