// Sigmoid and softmax: argument checks + dispatch, and the CPU reference.
#include "core/ops/activation.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <utility>

#include "core/ops/op_util.h"
#include "cuda/activation.h"

namespace moelab {

namespace ref {

template <typename T>
void sigmoid_forward(const T* x, T* y, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = sigmoid(x[i]);
}

template <typename T>
void sigmoid_backward(const T* grad_y, const T* y, T* grad_x, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) grad_x[i] = grad_y[i] * y[i] * (T(1) - y[i]);
}

template <typename T>
void softmax_forward(const T* x, T* y, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const T max = *std::max_element(xr, xr + cols);
    T sum = 0;
    for (int64_t c = 0; c < cols; ++c) {
      yr[c] = std::exp(xr[c] - max);
      sum += yr[c];
    }
    const T inv = T(1) / sum;  // sum >= 1: the max element contributes e^0
    for (int64_t c = 0; c < cols; ++c) yr[c] *= inv;
  }
}

template <typename T>
void softmax_backward(const T* grad_y, const T* y, T* grad_x, int64_t rows, int64_t cols) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* gy = grad_y + r * cols;
    const T* yr = y + r * cols;
    T dot = 0;  // sum_j grad_y_j * y_j
    for (int64_t c = 0; c < cols; ++c) dot += gy[c] * yr[c];
    for (int64_t c = 0; c < cols; ++c) grad_x[r * cols + c] = yr[c] * (gy[c] - dot);
  }
}

template void sigmoid_forward<float>(const float*, float*, int64_t);
template void sigmoid_forward<double>(const double*, double*, int64_t);
template void sigmoid_backward<float>(const float*, const float*, float*, int64_t);
template void sigmoid_backward<double>(const double*, const double*, double*, int64_t);
template void softmax_forward<float>(const float*, float*, int64_t, int64_t);
template void softmax_forward<double>(const double*, double*, int64_t, int64_t);
template void softmax_backward<float>(const float*, const float*, float*, int64_t, int64_t);
template void softmax_backward<double>(const double*, const double*, double*, int64_t, int64_t);

}  // namespace ref

namespace {
using Named = std::pair<const char*, const Tensor*>;

// The tensors of one call, input first: the input fixes the shape, device and dtype that every
// other tensor must have; softmax also needs rows of at least one element.
void check_alike(const char* op, bool softmax, std::initializer_list<Named> tensors) {
  const auto& [in_name, in] = *tensors.begin();
  check_ndim(op, in_name, *in, 1, 4);
  if (softmax) MOELAB_CHECK(in->size(-1) > 0, op, ": ", in_name, " is ", in->str(), ", its last dim must be > 0");
  for (const auto& [name, t] : tensors) check_shape(op, name, *t, in->shape());
  check_same_device(op, tensors);
  for (const auto& [name, t] : tensors) check_dtype(op, name, *t, in->dtype());
}
}  // namespace

void sigmoid_forward(const Exec& ex, const Tensor& x, const Tensor& y) {
  const char* op = "sigmoid_forward";
  check_alike(op, false, {{"x", &x}, {"y", &y}});
  if (x.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "x", x);
    cuda::SigmoidForwardParams p;
    p.x = x.raw();
    p.y = y.raw();
    p.n = x.numel();
    p.bf16 = x.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::sigmoid_forward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    ref::sigmoid_forward<T>(x.data<T>(), y.data<T>(), x.numel());
  });
}

void sigmoid_backward(const Exec& ex, const Tensor& grad_y, const Tensor& y, const Tensor& grad_x) {
  const char* op = "sigmoid_backward";
  check_alike(op, false, {{"y", &y}, {"grad_y", &grad_y}, {"grad_x", &grad_x}});
  if (y.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "y", y);
    cuda::SigmoidBackwardParams p;
    p.grad_y = grad_y.raw();
    p.y = y.raw();
    p.grad_x = grad_x.raw();
    p.n = y.numel();
    p.bf16 = y.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::sigmoid_backward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, y, [&](auto tag) {
    using T = decltype(tag);
    ref::sigmoid_backward<T>(grad_y.data<T>(), y.data<T>(), grad_x.data<T>(), y.numel());
  });
}

void softmax_forward(const Exec& ex, const Tensor& x, const Tensor& y) {
  const char* op = "softmax_forward";
  check_alike(op, true, {{"x", &x}, {"y", &y}});
  if (x.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "x", x);
    cuda::SoftmaxForwardParams p;
    p.x = x.raw();
    p.y = y.raw();
    p.rows = ops_detail::rows_of(x); p.cols = x.size(-1);
    p.bf16 = x.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::softmax_forward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    ref::softmax_forward<T>(x.data<T>(), y.data<T>(), ops_detail::rows_of(x), x.size(-1));
  });
}

void softmax_backward(const Exec& ex, const Tensor& grad_y, const Tensor& y, const Tensor& grad_x) {
  const char* op = "softmax_backward";
  check_alike(op, true, {{"y", &y}, {"grad_y", &grad_y}, {"grad_x", &grad_x}});
  if (y.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "y", y);
    cuda::SoftmaxBackwardParams p;
    p.grad_y = grad_y.raw();
    p.y = y.raw();
    p.grad_x = grad_x.raw();
    p.rows = ops_detail::rows_of(y); p.cols = y.size(-1);
    p.bf16 = y.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::softmax_backward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, y, [&](auto tag) {
    using T = decltype(tag);
    ref::softmax_backward<T>(grad_y.data<T>(), y.data<T>(), grad_x.data<T>(), ops_detail::rows_of(y), y.size(-1));
  });
}

}  // namespace moelab
