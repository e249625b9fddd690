#include "core/ops/elementwise.h"

#include "core/ops/op_util.h"

namespace moelab {

namespace ref {
template <typename T>
void add(const T* a, const T* b, T* out, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
template <typename T>
void axpy(T alpha, const T* x, T* y, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}
template void add<float>(const float*, const float*, float*, int64_t);
template void add<double>(const double*, const double*, double*, int64_t);
template void axpy<float>(float, const float*, float*, int64_t);
template void axpy<double>(double, const double*, double*, int64_t);
}  // namespace ref

namespace {
void check_same(const char* op, const char* na, const Tensor& a, const char* nb, const Tensor& b) {
  check_defined(op, na, a);
  check_defined(op, nb, b);
  MOELAB_CHECK(a.numel() == b.numel(), op, ": ", nb, " is ", b.str(), " but ", na, " is ", a.str(),
               " (element counts differ)");
  check_dtype(op, nb, b, a.dtype());
  check_same_device(op, {{na, &a}, {nb, &b}});
}
}  // namespace

void add(const Tensor& a, const Tensor& b, const Tensor& out) {
  const char* op = "add";
  check_same(op, "a", a, "b", b);
  check_same(op, "a", a, "out", out);
  if (a.device() == Device::CUDA) MOELAB_FAIL(op, ": no CUDA kernel yet");
  ops_detail::dispatch_cpu_float(op, a, [&](auto tag) {
    using T = decltype(tag);
    ref::add<T>(a.data<T>(), b.data<T>(), out.data<T>(), a.numel());
  });
}

void axpy(double alpha, const Tensor& x, const Tensor& y) {
  const char* op = "axpy";
  check_same(op, "x", x, "y", y);
  if (x.device() == Device::CUDA) MOELAB_FAIL(op, ": no CUDA kernel yet");
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    ref::axpy<T>(static_cast<T>(alpha), x.data<T>(), y.data<T>(), x.numel());
  });
}

}  // namespace moelab
