// bf16 matmul on the CPU: argument checks, the operands' rounding into scratch, and the f32 GEMMs
// (see bf16_matmul.h).
#include "core/ops/bf16_matmul.h"

#include <initializer_list>
#include <optional>
#include <utility>

#include "core/ops/cpu_gemm.h"
#include "core/ops/op_util.h"

namespace moelab {

namespace ref {

void round_to_bf16(const float* x, float* y, int64_t n) {
  // The bits of core/dtype.h's float_to_bf16_bits, kept in f32, written without branches so the
  // loop vectorises: integer selects only.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = __builtin_bit_cast(uint32_t, x[i]);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;  // nearest, ties to the even half
    const uint32_t nan = (u | 0x00400000u) & 0xffff0000u;                       // a quiet NaN stays one
    y[i] = __builtin_bit_cast(float, (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
}

}  // namespace ref

namespace {

// x [R, C] rounded to bf16 in a new f32 tensor, from the scratch when there is one.
Tensor rounded(ScratchScope* scratch, const Tensor& x) {
  const Tensor y = scratch ? scratch->take(x.shape(), DType::F32) : Tensor::empty(x.shape(), DType::F32);
  ref::round_to_bf16(x.data<float>(), y.data<float>(), x.numel());
  return y;
}

void check_cpu_f32(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
  for (const auto& [name, t] : tensors) {
    if (!t->defined()) continue;
    MOELAB_CHECK(t->device() == Device::CPU, op, ": ", name, " is ", t->str(), " on CUDA; bf16 GEMM operands are the "
                 "CPU's bf16 mode (on CUDA bf16 is the activations' dtype: matmul)");
    check_dtype(op, name, *t, DType::F32);
  }
}

}  // namespace

void bf16_matmul_forward(const Exec& ex, const Tensor& x, const Tensor& w, const Tensor& y) {
  const char* op = "bf16_matmul_forward";
  const ops_detail::MatmulDims d = ops_detail::check_matmul_shapes(op, x, w);
  check_shape(op, "y", y, ops_detail::matmul_output_shape(x, d.n));
  check_cpu_f32(op, {{"x", &x}, {"w", &w}, {"y", &y}});
  std::optional<ScratchScope> scratch;
  if (ex.scratch) scratch.emplace(ex, op);
  ScratchScope* s = scratch ? &*scratch : nullptr;
  const Tensor rx = rounded(s, x), rw = rounded(s, w);
  // y[M, N] = R(x)[M, K] R(w)[N, K]^T
  ref::gemm<float>(false, true, d.m, d.n, d.k, 1.0f, rx.data<float>(), d.k, rw.data<float>(), d.k, 0.0f,
                   y.data<float>(), d.n);
}

void bf16_matmul_backward(const Exec& ex, const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                          const Tensor& grad_w) {
  const char* op = "bf16_matmul_backward";
  const ops_detail::MatmulDims d = ops_detail::check_matmul_shapes(op, x, w);
  check_shape(op, "grad_y", grad_y, ops_detail::matmul_output_shape(x, d.n));
  if (grad_x.defined()) check_shape(op, "grad_x", grad_x, x.shape());
  check_shape(op, "grad_w", grad_w, w.shape());
  check_cpu_f32(op, {{"grad_y", &grad_y}, {"x", &x}, {"w", &w}, {"grad_x", &grad_x}, {"grad_w", &grad_w}});
  std::optional<ScratchScope> scratch;
  if (ex.scratch) scratch.emplace(ex, op);
  ScratchScope* s = scratch ? &*scratch : nullptr;
  const Tensor rdy = rounded(s, grad_y);
  if (grad_x.defined()) {  // grad_x[M, K] = R(dy)[M, N] R(w)[N, K]
    const Tensor rw = rounded(s, w);
    ref::gemm<float>(false, false, d.m, d.k, d.n, 1.0f, rdy.data<float>(), d.n, rw.data<float>(), d.k, 0.0f,
                     grad_x.data<float>(), d.k);
  }
  // grad_w[N, K] += R(dy)[M, N]^T R(x)[M, K]
  const Tensor rx = rounded(s, x);
  ref::gemm<float>(true, false, d.n, d.k, d.m, 1.0f, rdy.data<float>(), d.n, rx.data<float>(), d.k, 1.0f,
                   grad_w.data<float>(), d.k);
}

}  // namespace moelab
