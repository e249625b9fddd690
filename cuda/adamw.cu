// AdamW: one thread per element (grid-stride), the CPU reference's f32 expression term by term;
// the optional copy stores the updated param converted to its dtype. No reduction: deterministic.
#include <cuda_bf16.h>

#include <algorithm>
#include <type_traits>

#include "cuda/adamw.h"
#include "cuda/check.h"
#include "cuda/device_util.cuh"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 65536;  // grid-stride beyond this: any n (int64)

// C: float or __nv_bfloat16 for the copy; void for none.
template <typename C>
__global__ void adamw_kernel(float* param, const float* grad, float* m, float* v, C* copy, int64_t n, float decay,
                             float b1, float b2, float step_size, float bc2_sqrt, float eps) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float g = grad[i];
    const float mi = b1 * m[i] + (1.0f - b1) * g;
    const float vi = b2 * v[i] + (1.0f - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    const float p = param[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);  // IEEE sqrt and divide
    param[i] = p;
    if constexpr (!std::is_void_v<C>) store(copy, i, p);  // bf16: __float2bfloat16_rn (nearest even)
  }
}

template <typename C>
void launch(const AdamwParams& p, C* copy) {
  const unsigned blocks = std::min(blocks_for(p.n, kThreads), kMaxBlocks);
  adamw_kernel<C><<<blocks, kThreads, 0, p.stream>>>(p.param, p.grad, p.m, p.v, copy, p.n, p.decay, p.beta1, p.beta2,
                                                     p.step_size, p.bc2_sqrt, p.eps);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void adamw_step(const AdamwParams& p) {
  if (p.n == 0) return;
  if (!p.param_copy) launch<void>(p, nullptr);
  else if (p.copy_bf16) launch(p, static_cast<__nv_bfloat16*>(p.param_copy));
  else launch(p, static_cast<float*>(p.param_copy));
}

}  // namespace moelab::cuda
