// FP8 tile quantisation: argument checks + dispatch, and the CPU reference (the specification).
#include "core/ops/fp8_quant.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>
#include <vector>

#include "core/ops/op_util.h"

namespace moelab {

namespace ref {

namespace {
constexpr uint8_t kFp8NaN = 0x7f;  // e4m3's (positive) NaN: every q of a poisoned tile

// The scale of a tile from its amax over the non-NaN values (core/ops/fp8_quant.h).
float tile_scale(float amax, bool has_nan, bool pow2) {
  if (has_nan) return std::numeric_limits<float>::quiet_NaN();
  if (amax == 0.0f) return 1.0f;
  const float scale = std::max(amax / kFp8E4M3Max, FLT_MIN);  // amax = +Inf gives +Inf
  if (!pow2 || !std::isfinite(scale)) return scale;
  int e;
  const float frac = std::frexp(scale, &e);  // scale = frac * 2^e, frac in [0.5, 1)
  return frac == 0.5f ? scale : std::ldexp(1.0f, e);
}

int64_t tile_rows(Fp8Tile tile) { return tile == Fp8Tile::Row128 ? 1 : kFp8BlockSize; }

}  // namespace

template <typename T>
void fp8_quantize(const T* x, fp8_e4m3_t* q, float* scales, int64_t R, int64_t C, Fp8Tile tile, bool pow2_scales) {
  const int64_t th = tile_rows(tile), row_tiles = (R + th - 1) / th, nb = fp8_num_blocks(C);
#pragma omp parallel for schedule(static)
  for (int64_t rt = 0; rt < row_tiles; ++rt) {
    const int64_t r0 = rt * th, r1 = std::min(R, r0 + th);
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * kFp8BlockSize, c1 = std::min(C, c0 + kFp8BlockSize);
      float amax = 0.0f;
      bool has_nan = false;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) {
          const float v = static_cast<float>(x[r * C + c]);
          if (std::isnan(v)) has_nan = true;
          else amax = std::max(amax, std::fabs(v));
        }
      const float scale = tile_scale(amax, has_nan, pow2_scales);
      scales[rt * nb + b] = scale;
      const bool finite = std::isfinite(scale);
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c)
          q[r * C + c].bits = finite ? float_to_fp8_e4m3_bits(static_cast<float>(x[r * C + c]) / scale) : kFp8NaN;
    }
  }
}

namespace {
// The e4m3 value nearest |v| (ties to even, saturating at 448), for |v| finite: the value of
// float_to_fp8_e4m3_bits(v) computed in f32 arithmetic without branches, so that a loop of them
// vectorises. Normal results (|v| >= 2^-6) round the f32 mantissa to 3 bits as the conversion
// does; subnormal ones are multiples of 2^-9, which adding and subtracting 2^14 rounds to (the
// default rounding mode: nearest even).
inline float e4m3_round_abs(float v) {
  const float a = std::fabs(v);
  const uint32_t u = float_bits(a);
  const float normal = bits_float((u + 0x7ffffu + ((u >> 20) & 1u)) & ~0xfffffu);
  const float subnormal = (a + 0x1p14f) - 0x1p14f;
  return std::min(a < 0x1p-6f ? subnormal : normal, kFp8E4M3Max);
}
}  // namespace

void fp8_fake_quantize(const float* x, float* y, int64_t R, int64_t C, Fp8Tile tile, bool pow2_scales) {
  const int64_t th = tile_rows(tile), row_tiles = (R + th - 1) / th, nb = fp8_num_blocks(C);
#pragma omp parallel for schedule(static)
  for (int64_t rt = 0; rt < row_tiles; ++rt) {
    const int64_t r0 = rt * th, r1 = std::min(R, r0 + th);
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t c0 = b * kFp8BlockSize, c1 = std::min(C, c0 + kFp8BlockSize);
      // |x| orders as its bits, and a NaN's bits exceed +Inf's: one integer max finds both.
      uint32_t amax_bits = 0;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) amax_bits = std::max(amax_bits, float_bits(x[r * C + c]) & 0x7fffffffu);
      const float scale = tile_scale(bits_float(amax_bits), amax_bits > 0x7f800000u, pow2_scales);
      if (!std::isfinite(scale)) {  // a poisoned tile: every value NaN, as q = 0x7f dequantises
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) y[r * C + c] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      for (int64_t r = r0; r < r1; ++r) {
        const float* xr = x + r * C;
        float* yr = y + r * C;
        for (int64_t c = c0; c < c1; ++c) {  // vectorised: core/CMakeLists.txt says why it can be
          const float v = xr[c] / scale;
          yr[c] = std::copysign(e4m3_round_abs(v), v) * scale;
        }
      }
    }
  }
}

template <typename T>
void fp8_dequantize(const fp8_e4m3_t* q, const float* scales, T* y, int64_t R, int64_t C, Fp8Tile tile) {
  const int64_t th = tile_rows(tile), nb = fp8_num_blocks(C);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c)
      y[r * C + c] = static_cast<T>(fp8_e4m3_bits_to_float(q[r * C + c].bits)) *
                     static_cast<T>(scales[(r / th) * nb + c / kFp8BlockSize]);
}

template void fp8_quantize<float>(const float*, fp8_e4m3_t*, float*, int64_t, int64_t, Fp8Tile, bool);
template void fp8_quantize<double>(const double*, fp8_e4m3_t*, float*, int64_t, int64_t, Fp8Tile, bool);
template void fp8_dequantize<float>(const fp8_e4m3_t*, const float*, float*, int64_t, int64_t, Fp8Tile);
template void fp8_dequantize<double>(const fp8_e4m3_t*, const float*, double*, int64_t, int64_t, Fp8Tile);

}  // namespace ref

namespace {
// The float side [N, D] of a call: 2-D; f32 or f64 on the CPU (the references' types), f32 or bf16 on CUDA.
void check_float_side(const char* op, const char* name, const Tensor& t) {
  check_ndim(op, name, t, 2, 2);
  if (t.device() == Device::CUDA) ops_detail::check_cuda_f32_or_bf16(op, name, t);
  else
    MOELAB_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64, op, ": ", name, " is ", t.str(),
                 ", expected f32 or f64 on the CPU");
}

// q: fp8_e4m3 [r, c]; scales: f32 fp8_scales_shape(r, c, tile); all on the device of `other`.
void check_q_scales(const char* op, const char* other_name, const Tensor& other, const Shape& q_shape, const Tensor& q,
                    const Tensor& scales, Fp8Tile tile) {
  check_shape(op, "q", q, q_shape);
  check_dtype(op, "q", q, DType::FP8_E4M3);
  const Shape scales_shape = fp8_scales_shape(q_shape[0], q_shape[1], tile);
  check_defined(op, "scales", scales);
  MOELAB_CHECK(scales.shape() == scales_shape, op, ": scales is ", scales.str(), ", expected shape ", scales_shape.str(),
               tile == Fp8Tile::Row128 ? " (one scale per 128 channels of each row of q)"
                                       : " (one scale per 128 x 128 block of q)");
  check_dtype(op, "scales", scales, DType::F32);
  check_same_device(op, {{other_name, &other}, {"q", &q}, {"scales", &scales}});
}
}  // namespace

void fp8_quantize(const Exec& ex, const Tensor& x, const Tensor& q, const Tensor& scales, Fp8Quant how) {
  const char* op = "fp8_quantize";
  check_float_side(op, "x", x);
  const int64_t R = x.size(0), C = x.size(1);
  check_q_scales(op, "x", x, how.transpose ? Shape{C, R} : Shape{R, C}, q, scales, how.tile);
  if (x.device() == Device::CUDA) {
    cuda::Fp8QuantizeParams p;
    p.x = x.raw();
    p.q = static_cast<uint8_t*>(q.raw());
    p.scales = scales.data<float>();
    p.R = R;
    p.C = C;
    p.tile = how.tile;
    p.transpose = how.transpose;
    p.pow2_scales = how.pow2_scales;
    p.bf16 = x.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::fp8_quantize(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    if (!how.transpose) {
      ref::fp8_quantize<T>(x.data<T>(), q.data<fp8_e4m3_t>(), scales.data<float>(), R, C, how.tile, how.pow2_scales);
      return;
    }
    std::vector<T> xt(static_cast<size_t>(R * C));
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) xt[c * R + r] = x.data<T>()[r * C + c];
    ref::fp8_quantize<T>(xt.data(), q.data<fp8_e4m3_t>(), scales.data<float>(), C, R, how.tile, how.pow2_scales);
  });
}

void fp8_dequantize(const Exec& ex, const Tensor& q, const Tensor& scales, const Tensor& y, Fp8Tile tile) {
  const char* op = "fp8_dequantize";
  check_float_side(op, "y", y);
  check_q_scales(op, "y", y, y.shape(), q, scales, tile);
  if (y.device() == Device::CUDA) {
    cuda::Fp8DequantizeParams p;
    p.q = static_cast<const uint8_t*>(q.raw());
    p.scales = scales.data<float>();
    p.y = y.raw();
    p.R = y.size(0);
    p.C = y.size(1);
    p.tile = tile;
    p.bf16 = y.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::fp8_dequantize(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, y, [&](auto tag) {
    using T = decltype(tag);
    ref::fp8_dequantize<T>(q.data<fp8_e4m3_t>(), scales.data<float>(), y.data<T>(), y.size(0), y.size(1), tile);
  });
}

}  // namespace moelab
