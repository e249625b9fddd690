// FP8 1x128-tile quantisation: argument checks + dispatch, and the CPU reference (the specification).
#include "core/ops/fp8_quant.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <limits>

#include "core/ops/op_util.h"

namespace moelab {

namespace ref {

namespace {
constexpr uint8_t kFp8NaN = 0x7f;  // e4m3's (positive) NaN: every q of a poisoned block

// The scale of a block from its amax over the non-NaN values (core/ops/fp8_quant.h).
float block_scale(float amax, bool has_nan) {
  if (has_nan) return std::numeric_limits<float>::quiet_NaN();
  if (amax == 0.0f) return 1.0f;
  return std::max(amax / kFp8E4M3Max, FLT_MIN);  // amax = +Inf gives +Inf
}
}  // namespace

template <typename T>
void fp8_quantize(const T* x, fp8_e4m3_t* q, float* scales, int64_t N, int64_t D) {
  const int64_t nb = fp8_num_blocks(D);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t begin = n * D + b * kFp8BlockSize, width = std::min(kFp8BlockSize, D - b * kFp8BlockSize);
      float amax = 0.0f;
      bool has_nan = false;
      for (int64_t c = 0; c < width; ++c) {
        const float v = static_cast<float>(x[begin + c]);
        if (std::isnan(v)) has_nan = true;
        else amax = std::max(amax, std::fabs(v));
      }
      const float scale = block_scale(amax, has_nan);
      scales[n * nb + b] = scale;
      const bool finite = std::isfinite(scale);
      for (int64_t c = 0; c < width; ++c)
        q[begin + c].bits = finite ? float_to_fp8_e4m3_bits(static_cast<float>(x[begin + c]) / scale) : kFp8NaN;
    }
  }
}

template <typename T>
void fp8_dequantize(const fp8_e4m3_t* q, const float* scales, T* y, int64_t N, int64_t D) {
  const int64_t nb = fp8_num_blocks(D);
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d)
      y[n * D + d] = static_cast<T>(fp8_e4m3_bits_to_float(q[n * D + d].bits)) *
                     static_cast<T>(scales[n * nb + d / kFp8BlockSize]);
}

template void fp8_quantize<float>(const float*, fp8_e4m3_t*, float*, int64_t, int64_t);
template void fp8_quantize<double>(const double*, fp8_e4m3_t*, float*, int64_t, int64_t);
template void fp8_dequantize<float>(const fp8_e4m3_t*, const float*, float*, int64_t, int64_t);
template void fp8_dequantize<double>(const fp8_e4m3_t*, const float*, double*, int64_t, int64_t);

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

// q: fp8_e4m3 [N, D]; scales: f32 [N, ceil(D / 128)]; all on the device of `ref_t`.
void check_q_scales(const char* op, const char* ref_name, const Tensor& ref_t, const Tensor& q, const Tensor& scales) {
  const int64_t N = ref_t.size(0), D = ref_t.size(1);
  check_shape(op, "q", q, {N, D});
  check_dtype(op, "q", q, DType::FP8_E4M3);
  const Shape scales_shape{N, fp8_num_blocks(D)};
  check_defined(op, "scales", scales);
  MOELAB_CHECK(scales.shape() == scales_shape, op, ": scales is ", scales.str(), ", expected shape ", scales_shape.str(),
               " (one scale per block of ", kFp8BlockSize, " channels of each row)");
  check_dtype(op, "scales", scales, DType::F32);
  check_same_device(op, {{ref_name, &ref_t}, {"q", &q}, {"scales", &scales}});
}
}  // namespace

void fp8_quantize(const Exec& ex, const Tensor& x, const Tensor& q, const Tensor& scales) {
  const char* op = "fp8_quantize";
  check_float_side(op, "x", x);
  check_q_scales(op, "x", x, q, scales);
  if (x.device() == Device::CUDA) {
    cuda::Fp8QuantizeParams p;
    p.x = x.raw();
    p.q = static_cast<uint8_t*>(q.raw());
    p.scales = scales.data<float>();
    p.N = x.size(0);
    p.D = x.size(1);
    p.bf16 = x.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::fp8_quantize(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    ref::fp8_quantize<T>(x.data<T>(), q.data<fp8_e4m3_t>(), scales.data<float>(), x.size(0), x.size(1));
  });
}

void fp8_dequantize(const Exec& ex, const Tensor& q, const Tensor& scales, const Tensor& y) {
  const char* op = "fp8_dequantize";
  check_float_side(op, "y", y);
  check_q_scales(op, "y", y, q, scales);
  if (y.device() == Device::CUDA) {
    cuda::Fp8DequantizeParams p;
    p.q = static_cast<const uint8_t*>(q.raw());
    p.scales = scales.data<float>();
    p.y = y.raw();
    p.N = y.size(0);
    p.D = y.size(1);
    p.bf16 = y.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::fp8_dequantize(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, y, [&](auto tag) {
    using T = decltype(tag);
    ref::fp8_dequantize<T>(q.data<fp8_e4m3_t>(), scales.data<float>(), y.data<T>(), y.size(0), y.size(1));
  });
}

}  // namespace moelab
