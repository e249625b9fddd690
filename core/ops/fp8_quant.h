// FP8 quantisation with fine-grained scales (MODEL.md, "FP8 recipe (Hopper)"): DeepSeek-V3's
// recipe for the expert dispatch and the FP8 GEMMs. The matrix is cut into tiles that share one f32
// scale, which maps the tile's largest |x| onto e4m3's largest finite value 448: one outlier then
// costs its own tile precision, not its row or tensor.
//   Row128    1 x 128 tiles: one row, channels [128 b, min(128 b + 128, C)) (activations and
//             activation gradients; DeepSeek found 128 x 128 tiles for activation gradients diverge)
//   Block128  128 x 128 blocks (weights: a block is its own transpose's block, so the forward and
//             the input-gradient GEMM share one quantisation)
// `transpose` quantises x^T instead of x (with its tiles over x^T): the weight-gradient GEMM reduces
// over tokens, so it needs 128 x 1 tiles of the activations stored token-contiguous.
//
//   fp8_quantize    for each tile of the quantised matrix:
//                     amax = max |x| over the tile
//                     scale = 1                        if amax == 0 (an all-zero tile: q = +-0)
//                             max(amax / 448, 2^-126)   otherwise, an f32 division; the clamp to the
//                                                      smallest normal f32 only bites when
//                                                      amax < 448 * 2^-126, where amax / 448 would
//                                                      lose bits or flush to 0
//                     with pow2_scales: the smallest power of two >= that (exact divisions; the
//                     tile then uses between half and all of e4m3's range)
//                     q = e4m3(x / scale)              an f32 division, then core/dtype.h's
//                                                      round-to-nearest-even
//                   amax / scale rounds to 448 itself (it is within a few f32 ulps of it), or is
//                   below it (pow2), so the saturation of the e4m3 conversion never decides a value.
//                   A tile holding a NaN or an infinity is poisoned as a whole, so that the bad
//                   value cannot hide in the scale of its neighbours: scale = NaN (a NaN in the
//                   tile) or +Inf (an infinity, no NaN), and every q of the tile is NaN (0x7f).
//   fp8_dequantize  y = float(q) * scale of its tile, one rounding to y's dtype (a poisoned tile
//                   gives NaN).
// Round trip: for a tile whose scale is amax / 448, with v = x / scale (in f32) and y a normal f32,
//   |y - x| <= scale * h(v) + 2^-22 |x|,  h(v) = 2^(floor(log2 |v|) - 4) for |v| >= 2^-6 (half an
//   e4m3 step: 3 mantissa bits), 2^-10 below (half the subnormal step 2^-9); the second term
//   covers the two f32 roundings. So |y - x| <= |x| / 16 + 2^-22 |x| where v is normal in e4m3.
//
// Shapes: x: [R, C]   q: fp8_e4m3 [R, C] ([C, R] when transposed)   with (r, c) = q's shape,
//         scales: f32 Row128 [r, ceil(c / 128)] (fp8_num_blocks(c)), Block128 [ceil(r / 128),
//         ceil(c / 128)]   y: [r, c] (dequantised in q's layout).
// Contract: every output is OVERWRITTEN (all of it).
// Dtypes: CPU: x f32 or f64 (an f64 x is rounded to f32 first: the op computes in f32), y f32
//         (the f32 product) or f64 (the exact product).
//         CUDA: x and y f32 or bf16 (bf16 widens exactly to f32; a bf16 y is the f32 product
//         rounded to bf16). q and scales are bit for bit the CPU's from the same f32 values.
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"
#include "cuda/fp8_quant.h"

namespace moelab {

constexpr int64_t kFp8BlockSize = cuda::kFp8BlockSize;  // channels per scale (and rows of a Block128)
constexpr float kFp8E4M3Max = 448.0f;                   // the largest finite e4m3 value

using cuda::Fp8Tile;

// How to quantise: the tiles, whether x^T is quantised, power-of-two scales.
struct Fp8Quant {
  Fp8Tile tile = Fp8Tile::Row128;
  bool transpose = false;
  bool pow2_scales = false;
};

// The number of 128-wide blocks of D channels (or rows).
constexpr int64_t fp8_num_blocks(int64_t D) { return (D + kFp8BlockSize - 1) / kFp8BlockSize; }
// The shape of the scales of an [r, c] quantised matrix.
inline Shape fp8_scales_shape(int64_t r, int64_t c, Fp8Tile tile) {
  return {tile == Fp8Tile::Row128 ? r : fp8_num_blocks(r), fp8_num_blocks(c)};
}

void fp8_quantize(const Exec& ex, const Tensor& x, const Tensor& q, const Tensor& scales, Fp8Quant how = {});
void fp8_dequantize(const Exec& ex, const Tensor& q, const Tensor& scales, const Tensor& y,
                    Fp8Tile tile = Fp8Tile::Row128);

namespace ref {
// x: [R, C] row-major (not transposed: a caller transposes first); scales: fp8_scales_shape(R, C, tile).
template <typename T>
void fp8_quantize(const T* x, fp8_e4m3_t* q, float* scales, int64_t R, int64_t C, Fp8Tile tile, bool pow2_scales);
template <typename T>
void fp8_dequantize(const fp8_e4m3_t* q, const float* scales, T* y, int64_t R, int64_t C, Fp8Tile tile);
// Both in one pass, in f32: y = fp8_dequantize(fp8_quantize(x)) bit for bit, without q and the
// scales (the CPU's FP8 GEMM emulation, core/ops/fp8_matmul.h). y may be x.
void fp8_fake_quantize(const float* x, float* y, int64_t R, int64_t C, Fp8Tile tile, bool pow2_scales);
}  // namespace ref

}  // namespace moelab
