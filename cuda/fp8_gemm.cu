// The FP8 GEMM with fine-grained scales, our own kernel (cuda/fp8_gemm.h: the specification on the
// device, for tests and for where cuBLASLt has no algorithm):
//   C[i, j] = (accumulate ? C[i, j] : 0) + sum_c (sum_{r in c} a[i, r] b[j, r]) * sa(i, c) * sb(j, c)
// One thread per element of C, 16 x 16 threads per CUDA block. The block walks K in chunks of 128:
// it stages the chunk's 16 rows of a and of b in shared memory as f32 (coalesced byte loads, e4m3
// widened exactly), each thread sums its 128 products in f32 (every product of two e4m3 values is
// exact in f32, so an fma adds it with one rounding), then promotes the chunk's partial sum into
// its f32 accumulator: acc += (partial * sa) * sb, each operation rounded to nearest (__fmul_rn,
// __fadd_rn: nothing fused). A bf16 C is the f32 result rounded once.
//
// Also the scale conversion that Blas::gemm_fp8 (cuda/blas.cpp) needs for cuBLASLt's layouts; see
// fp8_scales_to_cublaslt below.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/fp8_gemm.h"

namespace moelab::cuda {

namespace {

constexpr int kChunk = static_cast<int>(kFp8BlockSize);  // 128: K elements per scale
constexpr int kTileMN = 16;                              // C tile: 16 x 16 threads
constexpr int kGemmThreads = kTileMN * kTileMN;
constexpr int kPitch = kChunk + 1;  // f32 words per staged row: rows 1 word apart land in different banks

__device__ __forceinline__ float fp8_to_float(uint8_t b) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(b, __NV_E4M3)));
}

// scale(row, chunk) of an operand with L = ceil(k / 128) chunks (cuda/fp8_gemm.h).
__device__ __forceinline__ float scale_of(const float* s, bool block, int64_t row, int64_t chunk, int64_t L) {
  return s[(block ? row / kChunk : row) * L + chunk];
}

// Grid: x over the row tiles of C (m), y over its column tiles (n).
template <typename TC>
__global__ void __launch_bounds__(kGemmThreads)
    fp8_gemm_reference_kernel(const uint8_t* a, const float* a_scales, bool a_block, const uint8_t* b,
                              const float* b_scales, bool b_block, TC* c, bool accumulate, int64_t m, int64_t n,
                              int64_t k) {
  __shared__ float as[kTileMN][kPitch];
  __shared__ float bs[kTileMN][kPitch];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTileMN + tx;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * kTileMN, j0 = static_cast<int64_t>(blockIdx.y) * kTileMN;
  const int64_t i = i0 + ty, j = j0 + tx;  // tx along n: the warp's stores of C are contiguous
  const int64_t L = (k + kChunk - 1) / kChunk;
  float acc = 0.0f;
  for (int64_t ch = 0; ch < L; ++ch) {
    const int64_t k0 = ch * kChunk;
    const int width = static_cast<int>(min(static_cast<int64_t>(kChunk), k - k0));
    // Stage: element e of the flattened [16][128] tile is row e / 128, column e % 128, so
    // consecutive threads read consecutive bytes of a row. Outside the matrices: 0.
    for (int e = tid; e < kTileMN * kChunk; e += kGemmThreads) {
      const int row = e / kChunk, col = e % kChunk;
      const bool in_k = col < width;
      as[row][col] = in_k && i0 + row < m ? fp8_to_float(a[(i0 + row) * k + k0 + col]) : 0.0f;
      bs[row][col] = in_k && j0 + row < n ? fp8_to_float(b[(j0 + row) * k + k0 + col]) : 0.0f;
    }
    __syncthreads();
    if (i < m && j < n) {
      float partial = 0.0f;
      for (int r = 0; r < width; ++r) partial = fmaf(as[ty][r], bs[tx][r], partial);  // exact products
      const float sa = scale_of(a_scales, a_block, i, ch, L), sb = scale_of(b_scales, b_block, j, ch, L);
      acc = __fadd_rn(acc, __fmul_rn(__fmul_rn(partial, sa), sb));
    }
    __syncthreads();  // the next chunk overwrites the staged tiles
  }
  if (i < m && j < n) {
    const int64_t idx = i * n + j;
    store(c, idx, accumulate ? __fadd_rn(load(c, idx), acc) : acc);
  }
}

// Row128 scales [rows, L] (row-major) -> cuBLASLt's VEC128_32F layout: rows-major, [L][rows].
__global__ void transpose_scales_kernel(const float* src, float* dst, int64_t rows, int64_t L) {
  const int64_t numel = rows * L, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t o = thread_index(); o < numel; o += stride) {  // o = l * rows + r: contiguous stores
    const int64_t l = o / rows, r = o % rows;
    dst[o] = src[r * L + l];
  }
}

// Block128 scales [row_blocks, L] -> cuBLASLt's BLK128x128_32F layout: K-major with the column stride
// L4 = L rounded up to a multiple of 4, [row_blocks][L4]; the padding is written as 0.
__global__ void pad_scales_kernel(const float* src, float* dst, int64_t row_blocks, int64_t L, int64_t L4) {
  const int64_t numel = row_blocks * L4, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t o = thread_index(); o < numel; o += stride) {
    const int64_t rb = o / L4, l = o % L4;
    dst[o] = l < L ? src[rb * L + l] : 0.0f;
  }
}

constexpr int kCopyThreads = 256;
constexpr unsigned kMaxCopyBlocks = 1024;

unsigned copy_blocks(int64_t n) {
  const int64_t blocks = (n + kCopyThreads - 1) / kCopyThreads;
  return static_cast<unsigned>(blocks < kMaxCopyBlocks ? blocks : kMaxCopyBlocks);
}

}  // namespace

void fp8_gemm_reference(const Fp8GemmParams& p) {
  if (p.m < 0 || p.n < 0 || p.k < 0)
    throw CudaError("fp8_gemm_reference: negative size m=" + std::to_string(p.m) + " n=" + std::to_string(p.n) +
                    " k=" + std::to_string(p.k));
  if (p.m == 0 || p.n == 0) return;
  if (p.k == 0 && p.accumulate) return;  // C += an empty sum: unchanged
  const int64_t row_tiles = (p.m + kTileMN - 1) / kTileMN, col_tiles = (p.n + kTileMN - 1) / kTileMN;
  if (col_tiles > 65535)
    throw CudaError("fp8_gemm_reference: n=" + std::to_string(p.n) + " exceeds the grid (at most " +
                    std::to_string(65535 * kTileMN) + ")");
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles));
  const dim3 block(kTileMN, kTileMN);
  const bool a_block = p.a_tile == Fp8Tile::Block128, b_block = p.b_tile == Fp8Tile::Block128;
  with_act_type(p.c_bf16, [&](auto* tag) {
    using TC = std::remove_pointer_t<decltype(tag)>;
    fp8_gemm_reference_kernel<TC><<<grid, block, 0, p.stream>>>(p.a, p.a_scales, a_block, p.b, p.b_scales, b_block,
                                                                 static_cast<TC*>(p.c), p.accumulate, p.m, p.n, p.k);
  });
  CUDA_CHECK_LAUNCH();
}

// cuda/fp8_gemm.h has the layouts.
int64_t fp8_scales_to_cublaslt(const float* src, float* dst, Fp8Tile tile, int64_t rows, int64_t L, Stream stream) {
  int64_t written;
  if (tile == Fp8Tile::Row128) {
    written = rows * L;
    if (written > 0) transpose_scales_kernel<<<copy_blocks(written), kCopyThreads, 0, stream>>>(src, dst, rows, L);
  } else {
    const int64_t row_blocks = (rows + kChunk - 1) / kChunk, L4 = (L + 3) / 4 * 4;
    written = row_blocks * L4;
    if (written > 0)
      pad_scales_kernel<<<copy_blocks(written), kCopyThreads, 0, stream>>>(src, dst, row_blocks, L, L4);
  }
  CUDA_CHECK_LAUNCH();
  return written;
}

}  // namespace moelab::cuda
