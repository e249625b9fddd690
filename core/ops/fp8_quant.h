// FP8 activation quantisation with 1x128 tiles (MODEL.md, "FP8 recipe (Hopper)"): DeepSeek-V3's
// fine-grained quantisation for the expert dispatch and the FP8 GEMMs. Each row is cut into blocks
// of 128 consecutive channels, and each block gets one f32 scale that maps its largest |x| onto
// e4m3's largest finite value 448: one outlier then costs its own block precision, not its row.
//
//   fp8_quantize    for row n, block b = channels [128 b, min(128 b + 128, D)):
//                     amax = max |x| over the block
//                     scale[n, b] = 1                       if amax == 0 (an all-zero block: q = +-0)
//                                   max(amax / 448, 2^-126)  otherwise, an f32 division; the clamp to
//                                                            the smallest normal f32 only bites when
//                                                            amax < 448 * 2^-126, where amax / 448
//                                                            would lose bits or flush to 0
//                     q[n, d] = e4m3(x[n, d] / scale)        an f32 division, then core/dtype.h's
//                                                            round-to-nearest-even
//                   amax / scale rounds to 448 itself (it is within a few f32 ulps of it), so the
//                   saturation of the e4m3 conversion never decides a value.
//                   A block holding a NaN or an infinity is poisoned as a whole, so that the bad
//                   value cannot hide in the scale of its neighbours: scale = NaN (a NaN in the
//                   block) or +Inf (an infinity, no NaN), and every q of the block is NaN (0x7f).
//   fp8_dequantize  y[n, d] = float(q[n, d]) * scale[n, d / 128], one rounding to y's dtype
//                   (a poisoned block gives NaN).
// Round trip: for a block whose scale is amax / 448, with v = x / scale (in f32) and y a normal f32,
//   |y - x| <= scale * h(v) + 2^-22 |x|,  h(v) = 2^(floor(log2 |v|) - 4) for |v| >= 2^-6 (half an
//   e4m3 step: 3 mantissa bits), 2^-10 below (half the subnormal step 2^-9); the second term
//   covers the two f32 roundings. So |y - x| <= |x| / 16 + 2^-22 |x| where v is normal in e4m3.
//
// Shapes: x, y: [N, D]   q: fp8_e4m3 [N, D]   scales: f32 [N, ceil(D / 128)] (fp8_num_blocks(D)).
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

constexpr int64_t kFp8BlockSize = cuda::kFp8BlockSize;  // channels per scale (1x128 tiles)
constexpr float kFp8E4M3Max = 448.0f;                   // the largest finite e4m3 value

// The number of 128-channel blocks of a row of D channels: the second dim of the scales.
constexpr int64_t fp8_num_blocks(int64_t D) { return (D + kFp8BlockSize - 1) / kFp8BlockSize; }

void fp8_quantize(const Exec& ex, const Tensor& x, const Tensor& q, const Tensor& scales);
void fp8_dequantize(const Exec& ex, const Tensor& q, const Tensor& scales, const Tensor& y);

namespace ref {
// N rows of D channels; scales has N x fp8_num_blocks(D) entries.
template <typename T>
void fp8_quantize(const T* x, fp8_e4m3_t* q, float* scales, int64_t N, int64_t D);
template <typename T>
void fp8_dequantize(const fp8_e4m3_t* q, const float* scales, T* y, int64_t N, int64_t D);
}  // namespace ref

}  // namespace moelab
