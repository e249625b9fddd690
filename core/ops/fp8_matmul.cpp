// FP8 matmul: argument checks + dispatch; the CPU emulation (quantise, dequantise, one f32 GEMM)
// and the chunked reference GEMM in f64 that specifies it (core/ops/fp8_matmul.h).
#include "core/ops/fp8_matmul.h"

#include <algorithm>
#include <optional>

#include "core/gpu_context.h"
#include "core/ops/cpu_gemm.h"
#include "core/ops/op_util.h"
#include "cuda/blas.h"

namespace moelab {

namespace ref {

void fp8_gemm(const fp8_e4m3_t* qa, const float* sa, Fp8Tile tile_a, const fp8_e4m3_t* qb, const float* sb,
              Fp8Tile tile_b, double* c, int64_t m, int64_t n, int64_t k, bool accumulate) {
  const int64_t nb = fp8_num_blocks(k);
  auto scale = [nb](const float* s, Fp8Tile tile, int64_t row, int64_t chunk) {
    return static_cast<double>(s[(tile == Fp8Tile::Row128 ? row : row / kFp8BlockSize) * nb + chunk]);
  };
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double acc = accumulate ? c[i * n + j] : 0.0;
      for (int64_t b = 0; b < nb; ++b) {
        double partial = 0.0;
        for (int64_t r = b * kFp8BlockSize; r < std::min(k, (b + 1) * kFp8BlockSize); ++r)
          partial += to_double(qa[i * k + r]) * to_double(qb[j * k + r]);
        acc += partial * scale(sa, tile_a, i, b) * scale(sb, tile_b, j, b);
      }
      c[i * n + j] = acc;
    }
}

}  // namespace ref

namespace {

// One operand of an FP8 GEMM: x [R, C] (or x^T) quantised as `how` says.
struct Quantised {
  Tensor q, scales;
};

// CUDA: x (or x^T) quantised as `how` says, into the op's scratch.
Quantised quantise(const Exec& ex, ScratchScope& scratch, const Tensor& x2d, Fp8Quant how) {
  const int64_t r = how.transpose ? x2d.size(1) : x2d.size(0), c = how.transpose ? x2d.size(0) : x2d.size(1);
  const Shape q_shape{r, c}, s_shape = fp8_scales_shape(r, c, how.tile);
  Quantised out;
  out.q = scratch.take(q_shape, DType::FP8_E4M3);
  out.scales = scratch.take(s_shape, DType::F32);
  fp8_quantize(ex, x2d, out.q, out.scales, how);
  return out;
}

// CPU: x (or x^T) as its FP8 tiles hold it, in f32: what the tensor cores multiply. From the
// step's arena when the Exec has one (its pages stay mapped from step to step), else the heap.
Tensor fake_quantise(ScratchScope* scratch, const Tensor& x2d, Fp8Quant how) {
  const int64_t R = x2d.size(0), C = x2d.size(1);
  const Shape shape = how.transpose ? Shape{C, R} : Shape{R, C};
  const Tensor y = scratch ? scratch->take(shape, DType::F32) : Tensor::empty(shape, DType::F32);
  const float* x = x2d.data<float>();
  float* out = y.data<float>();
  if (how.transpose) {  // in 32 x 32 blocks, so that the reads and the writes both stay in cache
    constexpr int64_t kBlock = 32;
    for (int64_t r0 = 0; r0 < R; r0 += kBlock)
      for (int64_t c0 = 0; c0 < C; c0 += kBlock)
        for (int64_t r = r0; r < std::min(R, r0 + kBlock); ++r)
          for (int64_t c = c0; c < std::min(C, c0 + kBlock); ++c) out[c * R + r] = x[r * C + c];
    x = out;
  }
  ref::fp8_fake_quantize(x, out, y.size(0), y.size(1), how.tile, how.pow2_scales);
  return y;
}

// CPU: c (+)= a[R, K] b[C, K]^T in f32 (cpu_gemm.h), c holding R x C values; beta 0 or 1.
void gemm_abt(const Tensor& a, const Tensor& b, const Tensor& c, float beta) {
  const int64_t r = a.size(0), k = a.size(1), n = b.size(0);
  ref::gemm<float>(false, true, r, n, k, 1.0f, a.data<float>(), k, b.data<float>(), k, beta, c.data<float>(), n);
}

// CUDA: c[m, n] (+)= a[m, k] b[n, k] through cuBLASLt's block scaling, else the reference kernel.
void gemm_fp8(const Exec& ex, const Quantised& a, Fp8Tile tile_a, const Quantised& b, Fp8Tile tile_b, const Tensor& c,
              bool accumulate) {
  cuda::Fp8GemmParams p;
  p.a = static_cast<const uint8_t*>(a.q.raw());
  p.a_scales = a.scales.data<float>();
  p.a_tile = tile_a;
  p.b = static_cast<const uint8_t*>(b.q.raw());
  p.b_scales = b.scales.data<float>();
  p.b_tile = tile_b;
  p.c = c.raw();
  p.c_bf16 = c.dtype() == DType::BF16;
  p.accumulate = accumulate;
  p.m = a.q.size(0);
  p.n = b.q.size(0);
  p.k = a.q.size(1);
  p.stream = ex.stream;
  if (!ex.gpu->blas().gemm_fp8(p)) cuda::fp8_gemm_reference(p);
}

// x f32 or bf16 on CUDA (with the GpuContext), f32 on the CPU; the tensors of `same` (where defined) x's dtype.
void check_dtypes(const char* op, const Exec& ex, const Tensor& x,
                  std::initializer_list<std::pair<const char*, const Tensor*>> same) {
  if (x.device() == Device::CUDA) {
    MOELAB_CHECK(ex.gpu != nullptr, op, ": x is ", x.str(), " on CUDA, which needs the GpuContext (core/gpu_context.h) "
                 "that owns the cuBLASLt handle: set Exec::gpu (layers have it in their Context)");
    ops_detail::check_cuda_f32_or_bf16(op, "x", x);
  } else {
    MOELAB_CHECK(x.dtype() == DType::F32, op, ": x is ", x.str(), ", expected f32 (the CPU emulates FP8 in f32)");
  }
  for (const auto& [name, t] : same)
    if (t->defined()) check_dtype(op, name, *t, x.dtype());
}

}  // namespace

void fp8_matmul_forward(const Exec& ex, const Tensor& x, const Tensor& w, const Tensor& y, const Fp8Recipe& recipe) {
  const char* op = "fp8_matmul_forward";
  const ops_detail::MatmulDims d = ops_detail::check_matmul_shapes(op, x, w);
  check_shape(op, "y", y, ops_detail::matmul_output_shape(x, d.n));
  check_same_device(op, {{"x", &x}, {"w", &w}, {"y", &y}});
  check_dtypes(op, ex, x, {{"w", &w}, {"y", &y}});
  const Tensor x2d = x.reshape({d.m, d.k});
  const Fp8Quant act{Fp8Tile::Row128, false, recipe.pow2_scales}, weight{Fp8Tile::Block128, false, recipe.pow2_scales};
  if (x.device() == Device::CUDA) {
    ScratchScope scratch(ex, op);
    gemm_fp8(ex, quantise(ex, scratch, x2d, act), act.tile, quantise(ex, scratch, w, weight), weight.tile,
             y.reshape({d.m, d.n}), /*accumulate=*/false);
    return;
  }
  // y[M, N] = Q(x)[M, K] Q(w)[N, K]^T
  std::optional<ScratchScope> scratch;
  if (ex.scratch) scratch.emplace(ex, op);
  ScratchScope* s = scratch ? &*scratch : nullptr;
  gemm_abt(fake_quantise(s, x2d, act), fake_quantise(s, w, weight), y, 0.0f);
}

void fp8_matmul_backward(const Exec& ex, const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                         const Tensor& grad_w, const Fp8Recipe& recipe) {
  const char* op = "fp8_matmul_backward";
  const ops_detail::MatmulDims d = ops_detail::check_matmul_shapes(op, x, w);
  check_shape(op, "grad_y", grad_y, ops_detail::matmul_output_shape(x, d.n));
  if (grad_x.defined()) check_shape(op, "grad_x", grad_x, x.shape());
  check_shape(op, "grad_w", grad_w, w.shape());
  check_same_device(op, {{"grad_y", &grad_y}, {"x", &x}, {"w", &w}, {"grad_x", &grad_x}, {"grad_w", &grad_w}});
  check_dtypes(op, ex, x, {{"grad_y", &grad_y}, {"w", &w}, {"grad_x", &grad_x}});
  check_dtype(op, "grad_w", grad_w, DType::F32);
  const Tensor x2d = x.reshape({d.m, d.k}), gy2d = grad_y.reshape({d.m, d.n});
  const bool pow2 = recipe.pow2_scales;
  const Fp8Quant act{Fp8Tile::Row128, false, pow2}, act_t{Fp8Tile::Row128, true, pow2};
  // Dgrad reads w^T ([K, N], reduction over N): its blocks are w's blocks transposed, same scales.
  const Fp8Quant weight_t{Fp8Tile::Block128, true, pow2};
  if (x.device() == Device::CUDA) {
    ScratchScope scratch(ex, op);
    if (grad_x.defined())  // grad_x[M, K] = Q(dy)[M, N] Q(w^T)[K, N]^T
      gemm_fp8(ex, quantise(ex, scratch, gy2d, act), act.tile, quantise(ex, scratch, w, weight_t), weight_t.tile,
               grad_x.reshape({d.m, d.k}), false);
    // grad_w[N, K] += Q(dy^T)[N, M] Q(x^T)[K, M]^T
    gemm_fp8(ex, quantise(ex, scratch, gy2d, act_t), act_t.tile, quantise(ex, scratch, x2d, act_t), act_t.tile,
             grad_w, /*accumulate=*/true);
    return;
  }
  std::optional<ScratchScope> scratch;
  if (ex.scratch) scratch.emplace(ex, op);
  ScratchScope* s = scratch ? &*scratch : nullptr;
  if (grad_x.defined()) gemm_abt(fake_quantise(s, gy2d, act), fake_quantise(s, w, weight_t), grad_x, 0.0f);
  gemm_abt(fake_quantise(s, gy2d, act_t), fake_quantise(s, x2d, act_t), grad_w, 1.0f);
}

}  // namespace moelab
