// Philox fills on the GPU: one thread per element, stateless, so the result cannot depend on the
// launch shape. The arithmetic mirrors core/rng.cpp with explicit _rn intrinsics so that nvcc's
// default FMA contraction cannot change a rounding.
#include "cuda/check.h"
#include "cuda/philox.h"
#include "cuda/rng.h"

namespace moelab::cuda {

namespace {
__global__ void fill_random_kernel(FillRandomParams p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  const uint64_t g = p.offset + static_cast<uint64_t>(i);
  if (p.normal) {
    p.out[i] = static_cast<float>(__dadd_rn(p.a, __dmul_rn(p.b, philox::normal(p.seed, g))));
  } else {
    const float lo = static_cast<float>(p.a), hi = static_cast<float>(p.b);
    p.out[i] = __fadd_rn(lo, __fmul_rn(__fsub_rn(hi, lo), philox::uniform(p.seed, g)));
  }
}
}  // namespace

void fill_random_f32(const FillRandomParams& p) {
  if (p.n == 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (p.n + kThreads - 1) / kThreads;
  fill_random_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, p.stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
