#include "core/gpu_context.h"

#include "core/allocator.h"
#include "core/cuda_dispatch.h"
#if MOELAB_WITH_CUDA
#include "cuda/blas.h"
#endif

namespace moelab {

#if MOELAB_WITH_CUDA
GpuContext::GpuContext() {
  MOELAB_CHECK(cuda_available(), "GpuContext: no CUDA device is visible (no driver, no GPU, or "
               "CUDA_VISIBLE_DEVICES hides them); use --device cpu");
  blas_ = std::make_unique<cuda::Blas>();
}
#else
namespace cuda {
class Blas {};  // never constructed without CUDA; complete only so that unique_ptr can name it
}  // namespace cuda
GpuContext::GpuContext() { MOELAB_NO_CUDA("GpuContext"); }
#endif

GpuContext::~GpuContext() = default;

}  // namespace moelab
