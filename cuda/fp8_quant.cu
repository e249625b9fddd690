// FP8 1x128-tile quantisation kernels (core/ops/fp8_quant.h: scale = max(amax / 448, 2^-126), 1 for
// an all-zero block, NaN / +Inf for a block holding a NaN / an infinity; q = e4m3(x / scale)).
// Quantise: one warp per (row, block); lane l holds channels l, l + 32, l + 64, l + 96 of the
// block, so each load and store of the warp is contiguous. The amax is a warp max (exact in any
// order), the divisions are __fdiv_rn (IEEE, as the CPU's), and the e4m3 conversion is CUDA's
// round-to-nearest-even with __NV_SATFINITE, core/dtype.h's rule: q and scales are the CPU's bits.
// Dequantise: one thread per element, one f32 product __fmul_rn (never fused into anything).
// Subnormal f32 inputs and scales count: the build keeps denormals (no -ftz, no --use_fast_math).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cfloat>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/fp8_quant.h"

namespace moelab::cuda {

namespace {

constexpr int kWarpsPerBlock = 8;                      // 256 threads: 8 (row, block) tiles per CUDA block
constexpr int kPerLane = kFp8BlockSize / kWarp;        // 4 channels per lane
constexpr int kThreads = 256;                          // dequantise
constexpr unsigned kMaxBlocks = 4096;                  // grid-stride past this: ~1M threads fill any GPU
constexpr float kE4M3Max = 448.0f;                     // the largest finite e4m3 value
constexpr uint8_t kFp8NaN = 0x7f;                      // every q of a poisoned block
static_assert(kFp8BlockSize % kWarp == 0, "a warp covers a block in whole strides");

template <typename T>
__global__ void quantize_kernel(const T* x, uint8_t* q, float* scales, int64_t N, int64_t D, int64_t nb) {
  const int lane = threadIdx.x;
  const int64_t tiles = N * nb, stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  // t is the same for the 32 lanes of a warp, so whole warps take the shuffles below.
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; t < tiles; t += stride) {
    const int64_t n = t / nb, b = t % nb;
    const int64_t begin = n * D + b * kFp8BlockSize;
    const int64_t width = min(static_cast<int64_t>(kFp8BlockSize), D - b * kFp8BlockSize);
    float v[kPerLane];
    float amax = 0.0f;
    bool has_nan = false;
    for (int j = 0; j < kPerLane; ++j) {
      const int c = lane + j * kWarp;
      v[j] = c < width ? load(x, begin + c) : 0.0f;
      has_nan = has_nan || isnan(v[j]);
      amax = fmaxf(amax, fabsf(v[j]));  // fmaxf drops a NaN; has_nan keeps it
    }
    amax = warp_max(amax);
    has_nan = __any_sync(0xffffffffu, has_nan);
    float scale;
    if (has_nan) scale = __int_as_float(0x7fc00000);  // the quiet NaN std::numeric_limits gives on the CPU
    else if (amax == 0.0f) scale = 1.0f;
    else scale = fmaxf(__fdiv_rn(amax, kE4M3Max), FLT_MIN);
    if (lane == 0) scales[t] = scale;  // t = n * nb + b
    const bool finite = isfinite(scale);
    for (int j = 0; j < kPerLane; ++j) {
      const int c = lane + j * kWarp;
      if (c < width)
        q[begin + c] = finite ? __nv_cvt_float_to_fp8(__fdiv_rn(v[j], scale), __NV_SATFINITE, __NV_E4M3) : kFp8NaN;
    }
  }
}

// e4m3 -> f32 through f16, exact: every e4m3 value (subnormals 2^-9 included) is an f16 value.
__device__ __forceinline__ float fp8_to_float(uint8_t b) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(b, __NV_E4M3)));
}

template <typename T>
__global__ void dequantize_kernel(const uint8_t* q, const float* scales, T* y, int64_t N, int64_t D, int64_t nb) {
  const int64_t numel = N * D, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = thread_index(); i < numel; i += stride) {
    const int64_t n = i / D, d = i % D;
    store(y, i, __fmul_rn(fp8_to_float(q[i]), scales[n * nb + d / kFp8BlockSize]));
  }
}

unsigned capped_blocks(int64_t work, int per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

}  // namespace

void fp8_quantize(const Fp8QuantizeParams& p) {
  if (p.N == 0 || p.D == 0) return;
  const int64_t nb = (p.D + kFp8BlockSize - 1) / kFp8BlockSize;
  const dim3 block(kWarp, kWarpsPerBlock);
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    quantize_kernel<<<capped_blocks(p.N * nb, kWarpsPerBlock), block, 0, p.stream>>>(
        static_cast<const T*>(p.x), p.q, p.scales, p.N, p.D, nb);
  });
  CUDA_CHECK_LAUNCH();
}

void fp8_dequantize(const Fp8DequantizeParams& p) {
  if (p.N == 0 || p.D == 0) return;
  const int64_t nb = (p.D + kFp8BlockSize - 1) / kFp8BlockSize;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dequantize_kernel<<<capped_blocks(p.N * p.D, kThreads), kThreads, 0, p.stream>>>(p.q, p.scales,
                                                                                     static_cast<T*>(p.y), p.N, p.D, nb);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
