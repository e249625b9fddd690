// FP8 tile quantisation kernels (core/ops/fp8_quant.h: scale = max(amax / 448, 2^-126), 1 for an
// all-zero tile, NaN / +Inf for a tile holding a NaN / an infinity, optionally rounded up to a power
// of two; q = e4m3(x / scale)). x is [R, C]; the quantised matrix is x, or x^T ([C, R]) when
// transposed, and its tiles are 1 x 128 (Row128) or 128 x 128 (Block128) over the quantised matrix.
//
// Two kernels:
//   quantize_rows_kernel    Row128, not transposed: one warp per (row, 128-channel block); lane l
//                           holds channels l, l + 32, l + 64, l + 96, so each load and store of the
//                           warp is contiguous. The amax is a warp max.
//   quantize_region_kernel  everything else: one CUDA block per 128 x 128 region of x (warp w holds
//                           rows w + 8 i, lane l columns l + 32 j, so every load reads whole rows).
//                           Block128: the region is the tile; its amax is a block max. Row128
//                           transposed: a tile of x^T is 128 rows of ONE column of x, so each column
//                           of the region gets its own amax (a max over the 8 warps through shared
//                           memory). Transposed outputs are staged through shared memory and written
//                           row by row of x^T, so the stores are contiguous too.
// A max is exact in any order, the divisions are __fdiv_rn (IEEE, as the CPU's), the power of two
// is exact bit arithmetic, and the e4m3 conversion is CUDA's round-to-nearest-even with
// __NV_SATFINITE, core/dtype.h's rule: q and scales are the CPU's bits.
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

constexpr int kTile = static_cast<int>(kFp8BlockSize);  // 128: the side of a tile
constexpr int kWarpsPerBlock = 8;                       // 256 threads per CUDA block in both kernels
constexpr int kRegionThreads = kWarpsPerBlock * kWarp;  // quantize_region_kernel's block
constexpr int kPerLane = kTile / kWarp;                 // 4 columns per lane
constexpr int kRowsPerWarp = kTile / kWarpsPerBlock;    // 16 rows of a region per warp
constexpr int kStagePitch = kTile + 4;  // bytes per staged row: 33 words, so a warp's 32 rows hit 32 banks
constexpr int kThreads = 256;           // dequantise
constexpr unsigned kMaxBlocks = 4096;   // grid-stride past this: ~1M threads fill any GPU
constexpr float kE4M3Max = 448.0f;      // the largest finite e4m3 value
constexpr uint8_t kFp8NaN = 0x7f;       // every q of a poisoned tile
static_assert(kTile % kWarp == 0 && kTile % kWarpsPerBlock == 0, "a region splits evenly over warps and lanes");
static_assert(kTile <= kRegionThreads, "one thread per column of a region finishes the column amaxes");

// The scale of a tile from its amax over the non-NaN values (core/ops/fp8_quant.h, ref::tile_scale).
__device__ __forceinline__ float tile_scale(float amax, bool has_nan, bool pow2) {
  if (has_nan) return __int_as_float(0x7fc00000);  // the quiet NaN std::numeric_limits gives on the CPU
  if (amax == 0.0f) return 1.0f;
  float scale = fmaxf(__fdiv_rn(amax, kE4M3Max), FLT_MIN);  // amax = +Inf gives +Inf
  if (pow2 && isfinite(scale)) {
    // scale is a normal f32 (>= 2^-126) below 2^119: keep a power of two, else the next one up
    // (clear the mantissa, add one to the exponent); std::frexp / std::ldexp on the CPU.
    const unsigned u = __float_as_uint(scale);
    if ((u & 0x007fffffu) != 0) scale = __uint_as_float((u & 0x7f800000u) + 0x00800000u);
  }
  return scale;
}

__device__ __forceinline__ uint8_t quantize_one(float v, float scale, bool finite) {
  return finite ? static_cast<uint8_t>(__nv_cvt_float_to_fp8(__fdiv_rn(v, scale), __NV_SATFINITE, __NV_E4M3))
                : kFp8NaN;
}

// Row128, not transposed: scales [R, nb], q [R, C].
template <typename T>
__global__ void quantize_rows_kernel(const T* x, uint8_t* q, float* scales, int64_t R, int64_t C, int64_t nb,
                                     bool pow2) {
  const int lane = threadIdx.x;
  const int64_t tiles = R * nb, stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  // t is the same for the 32 lanes of a warp, so whole warps take the shuffles below.
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; t < tiles; t += stride) {
    const int64_t r = t / nb, b = t % nb;
    const int64_t begin = r * C + b * kTile;
    const int64_t width = min(static_cast<int64_t>(kTile), C - b * kTile);
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
    const float scale = tile_scale(amax, has_nan, pow2);
    if (lane == 0) scales[t] = scale;  // t = r * nb + b
    const bool finite = isfinite(scale);
    for (int j = 0; j < kPerLane; ++j) {
      const int c = lane + j * kWarp;
      if (c < width) q[begin + c] = quantize_one(v[j], scale, finite);
    }
  }
}

// One 128 x 128 region of x [R, C] per CUDA block (grid-stride over the nbr x nbc regions).
//   kBlock      true: Block128 (the region is one tile); false: Row128 transposed (one tile per column)
//   kTranspose  q is x^T [C, R]; otherwise q is x [R, C] (only with kBlock: Row128 not transposed is
//               quantize_rows_kernel)
// Scales: Block128 [nbr, nbc] (not transposed) or [nbc, nbr] (transposed: the tiles of x^T);
// Row128 transposed [C, nbr].
template <typename T, bool kBlock, bool kTranspose>
__global__ void __launch_bounds__(kRegionThreads)
    quantize_region_kernel(const T* x, uint8_t* q, float* scales, int64_t R, int64_t C, int64_t nbr, int64_t nbc,
                           bool pow2) {
  static_assert(kBlock || kTranspose, "Row128 without transpose is quantize_rows_kernel");
  __shared__ float red[kWarp];                            // block_max's scratch
  __shared__ float col_amax[kWarpsPerBlock][kTile];       // Row128: per-warp column maxima
  __shared__ int col_nan[kWarpsPerBlock][kTile];          // Row128: per-warp column NaN flags
  __shared__ float col_scale[kTile];                      // Row128: the scale of each column
  __shared__ uint8_t stage[kTranspose ? kTile : 1][kTranspose ? kStagePitch : 1];  // q^T of the region
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t regions = nbr * nbc;
  for (int64_t g = blockIdx.x; g < regions; g += gridDim.x) {  // uniform per block: the syncs below are safe
    const int64_t rb = g / nbc, cb = g % nbc, r0 = rb * kTile, c0 = cb * kTile;
    const int rows = static_cast<int>(min(static_cast<int64_t>(kTile), R - r0));
    const int cols = static_cast<int>(min(static_cast<int64_t>(kTile), C - c0));

    // Load: v[i][j] = x[r0 + warp + 8 i, c0 + lane + 32 j] (0 outside x: it moves no amax).
    float v[kRowsPerWarp][kPerLane];
    bool nan_col[kPerLane];
    float amax_col[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      nan_col[j] = false;
      amax_col[j] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = warp + i * kWarpsPerBlock;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int c = lane + j * kWarp;
        const float val = r < rows && c < cols ? load(x, (r0 + r) * C + c0 + c) : 0.0f;
        v[i][j] = val;
        nan_col[j] = nan_col[j] || isnan(val);
        amax_col[j] = fmaxf(amax_col[j], fabsf(val));  // fmaxf drops a NaN; nan_col keeps it
      }
    }

    // The scale(s) of the region's tile(s).
    float scale_j[kPerLane];
    if constexpr (kBlock) {
      float amax = 0.0f;
      bool has_nan = false;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        amax = fmaxf(amax, amax_col[j]);
        has_nan = has_nan || nan_col[j];
      }
      amax = block_max(amax, red);
      has_nan = __syncthreads_or(has_nan) != 0;
      const float scale = tile_scale(amax, has_nan, pow2);
      if (threadIdx.x == 0) scales[kTranspose ? cb * nbr + rb : rb * nbc + cb] = scale;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) scale_j[j] = scale;
    } else {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        col_amax[warp][lane + j * kWarp] = amax_col[j];
        col_nan[warp][lane + j * kWarp] = nan_col[j];
      }
      __syncthreads();
      if (threadIdx.x < kTile) {
        const int c = threadIdx.x;
        float amax = 0.0f;
        bool has_nan = false;
        for (int w = 0; w < kWarpsPerBlock; ++w) {
          amax = fmaxf(amax, col_amax[w][c]);
          has_nan = has_nan || col_nan[w][c] != 0;
        }
        const float scale = tile_scale(amax, has_nan, pow2);
        col_scale[c] = scale;
        if (c < cols) scales[(c0 + c) * nbr + rb] = scale;  // Row128 over x^T: [C, nbr]
      }
      __syncthreads();
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) scale_j[j] = col_scale[lane + j * kWarp];
    }

    // Quantise; store directly (x's layout) or through the staging tile (x^T's layout).
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      const int r = warp + i * kWarpsPerBlock;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int c = lane + j * kWarp;
        const uint8_t b = quantize_one(v[i][j], scale_j[j], isfinite(scale_j[j]));
        if constexpr (kTranspose) {
          stage[c][r] = b;
        } else {
          if (r < rows && c < cols) q[(r0 + r) * C + c0 + c] = b;
        }
      }
    }
    if constexpr (kTranspose) {
      __syncthreads();
      // Row c of the region's x^T is q[c0 + c, r0 .. r0 + rows): warp w writes rows w + 8 i.
      for (int c = warp; c < cols; c += kWarpsPerBlock)
        for (int r = lane; r < rows; r += kWarp) q[(c0 + c) * R + r0 + r] = stage[c][r];
    }
    __syncthreads();  // the next region reuses the shared arrays
  }
}

// e4m3 -> f32 through f16, exact: every e4m3 value (subnormals 2^-9 included) is an f16 value.
__device__ __forceinline__ float fp8_to_float(uint8_t b) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(b, __NV_E4M3)));
}

// y [R, C] = q * the scale of its tile: scales[(r / tile_rows) * nb + c / 128].
template <typename T>
__global__ void dequantize_kernel(const uint8_t* q, const float* scales, T* y, int64_t R, int64_t C, int64_t nb,
                                  int64_t tile_rows) {
  const int64_t numel = R * C, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = thread_index(); i < numel; i += stride) {
    const int64_t r = i / C, c = i % C;
    store(y, i, __fmul_rn(fp8_to_float(q[i]), scales[(r / tile_rows) * nb + c / kTile]));
  }
}

unsigned capped_blocks(int64_t work, int per_block) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

int64_t num_tiles(int64_t n) { return (n + kTile - 1) / kTile; }

template <typename T, bool kBlock, bool kTranspose>
void launch_region(const Fp8QuantizeParams& p) {
  const int64_t nbr = num_tiles(p.R), nbc = num_tiles(p.C);
  quantize_region_kernel<T, kBlock, kTranspose><<<capped_blocks(nbr * nbc, 1), kRegionThreads, 0, p.stream>>>(
      static_cast<const T*>(p.x), p.q, p.scales, p.R, p.C, nbr, nbc, p.pow2_scales);
}

}  // namespace

void fp8_quantize(const Fp8QuantizeParams& p) {
  if (p.R == 0 || p.C == 0) return;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (p.tile == Fp8Tile::Row128 && !p.transpose) {
      const int64_t nb = num_tiles(p.C);
      quantize_rows_kernel<<<capped_blocks(p.R * nb, kWarpsPerBlock), dim3(kWarp, kWarpsPerBlock), 0, p.stream>>>(
          static_cast<const T*>(p.x), p.q, p.scales, p.R, p.C, nb, p.pow2_scales);
    } else if (p.tile == Fp8Tile::Row128) {
      launch_region<T, false, true>(p);
    } else if (p.transpose) {
      launch_region<T, true, true>(p);
    } else {
      launch_region<T, true, false>(p);
    }
  });
  CUDA_CHECK_LAUNCH();
}

void fp8_dequantize(const Fp8DequantizeParams& p) {
  if (p.R == 0 || p.C == 0) return;
  const int64_t nb = num_tiles(p.C), tile_rows = p.tile == Fp8Tile::Row128 ? 1 : kTile;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dequantize_kernel<<<capped_blocks(p.R * p.C, kThreads), kThreads, 0, p.stream>>>(
        p.q, p.scales, static_cast<T*>(p.y), p.R, p.C, nb, tile_rows);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
