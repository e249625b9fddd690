// SwiGLU: argument checks + dispatch, and the CPU reference (elementwise, so the leading dims do
// not matter: n = every element).
#include "core/ops/swiglu.h"

#include <initializer_list>
#include <utility>

#include "core/ops/vec_math.h"  // ref::sigmoid_approx: stable for any |a|, vectorises
#include "core/ops/op_util.h"
#include "cuda/swiglu.h"

namespace moelab {

namespace ref {

template <typename T>
void swiglu_forward(const T* gate, const T* up, T* out, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] * sigmoid_approx(gate[i]) * up[i];
}

template <typename T>
void swiglu_backward(const T* grad_out, const T* gate, const T* up, T* grad_gate, T* grad_up, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T a = gate[i], s = sigmoid_approx(a);  // s saturates to 0 or 1 for large |a|: no inf, no NaN
    const T dsilu = s * (T(1) + a * (T(1) - s));
    grad_gate[i] = grad_out[i] * up[i] * dsilu;
    grad_up[i] = grad_out[i] * a * s;
  }
}

template void swiglu_forward<float>(const float*, const float*, float*, int64_t);
template void swiglu_forward<double>(const double*, const double*, double*, int64_t);
template void swiglu_backward<float>(const float*, const float*, const float*, float*, float*, int64_t);
template void swiglu_backward<double>(const double*, const double*, const double*, double*, double*, int64_t);

}  // namespace ref

namespace {
using Named = std::pair<const char*, const Tensor*>;

// The tensors of one call, gate first: gate fixes the shape, device and dtype of all the others.
void check_alike(const char* op, std::initializer_list<Named> tensors) {
  const auto& [gate_name, gate] = *tensors.begin();
  check_ndim(op, gate_name, *gate, 1, 4);
  for (const auto& [name, t] : tensors) check_shape(op, name, *t, gate->shape());
  check_same_device(op, tensors);
  for (const auto& [name, t] : tensors) check_dtype(op, name, *t, gate->dtype());
}
}  // namespace

void swiglu_forward(const Exec& ex, const Tensor& gate, const Tensor& up, const Tensor& out) {
  const char* op = "swiglu_forward";
  check_alike(op, {{"gate", &gate}, {"up", &up}, {"out", &out}});
  if (gate.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "gate", gate);
    cuda::SwigluForwardParams p;
    p.gate = gate.raw();
    p.up = up.raw();
    p.out = out.raw();
    p.n = gate.numel();
    p.bf16 = gate.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::swiglu_forward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, gate, [&](auto tag) {
    using T = decltype(tag);
    ref::swiglu_forward<T>(gate.data<T>(), up.data<T>(), out.data<T>(), gate.numel());
  });
}

void swiglu_backward(const Exec& ex, const Tensor& grad_out, const Tensor& gate, const Tensor& up,
                     const Tensor& grad_gate, const Tensor& grad_up) {
  const char* op = "swiglu_backward";
  check_alike(op, {{"gate", &gate}, {"up", &up}, {"grad_out", &grad_out}, {"grad_gate", &grad_gate},
                   {"grad_up", &grad_up}});
  if (gate.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "gate", gate);
    cuda::SwigluBackwardParams p;
    p.grad_out = grad_out.raw();
    p.gate = gate.raw();
    p.up = up.raw();
    p.grad_gate = grad_gate.raw();
    p.grad_up = grad_up.raw();
    p.n = gate.numel();
    p.bf16 = gate.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::swiglu_backward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, gate, [&](auto tag) {
    using T = decltype(tag);
    ref::swiglu_backward<T>(grad_out.data<T>(), gate.data<T>(), up.data<T>(), grad_gate.data<T>(), grad_up.data<T>(),
                            gate.numel());
  });
}

}  // namespace moelab
