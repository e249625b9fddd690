#include "core/ops/elementwise.h"

#include <type_traits>

#include "core/ops/op_util.h"
#include "cuda/elementwise.h"

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

// One element of the CPU cast: through double (exact for every source dtype), then to D the way
// Tensor::to converts (f32 and bf16 targets round from float, to nearest even).
template <typename D>
D cast_from_double(double v) {
  if constexpr (std::is_same_v<D, double>) return v;
  else return from_float<D>(static_cast<float>(v));
}

template <typename Fn>
void visit_cast_dtype(const char* op, const char* name, const Tensor& t, Fn&& fn) {
  switch (t.dtype()) {
    case DType::F32: fn(float{}); break;
    case DType::F64: fn(double{}); break;
    case DType::BF16: fn(bf16_t{}); break;
    default: MOELAB_FAIL(op, ": ", name, " is ", t.str(), ", expected f32, f64 or bf16 (or the same dtype as the other side)");
  }
}
}  // namespace

void add(const Exec& ex, const Tensor& a, const Tensor& b, const Tensor& out) {
  const char* op = "add";
  check_same(op, "a", a, "b", b);
  check_same(op, "a", a, "out", out);
  ops_detail::check_in_place_or_disjoint(op, "a", a, "out", out);
  ops_detail::check_in_place_or_disjoint(op, "b", b, "out", out);
  if (a.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "a", a);
    cuda::AddParams p;
    p.a = a.raw();
    p.b = b.raw();
    p.out = out.raw();
    p.n = a.numel();
    p.bf16 = a.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::add(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, a, [&](auto tag) {
    using T = decltype(tag);
    ref::add<T>(a.data<T>(), b.data<T>(), out.data<T>(), a.numel());
  });
}

void axpy(const Exec& ex, double alpha, const Tensor& x, const Tensor& y) {
  const char* op = "axpy";
  check_same(op, "x", x, "y", y);
  ops_detail::check_in_place_or_disjoint(op, "x", x, "y", y);
  if (x.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "x", x);
    cuda::AxpyParams p;
    p.alpha = static_cast<float>(alpha);
    p.x = x.raw();
    p.y = y.raw();
    p.n = x.numel();
    p.bf16 = x.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::axpy(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    ref::axpy<T>(static_cast<T>(alpha), x.data<T>(), y.data<T>(), x.numel());
  });
}

void cast(const Exec& ex, const Tensor& x, const Tensor& y) {
  const char* op = "cast";
  check_defined(op, "x", x);
  check_defined(op, "y", y);
  check_shape(op, "y", y, x.shape());
  check_same_device(op, {{"x", &x}, {"y", &y}});
  const bool same_dtype = x.dtype() == y.dtype();
  if (x.storage() == y.storage()) {
    const size_t a = x.byte_offset(), b = y.byte_offset();
    if (same_dtype && a == b) return;  // the very same tensor: nothing to do
    MOELAB_CHECK(a + x.nbytes() <= b || b + y.nbytes() <= a, op, ": y ", y.str(), " overlaps x ", x.str(),
                 "; cast needs disjoint memory (or the same tensor of one dtype)");
  }
  if (same_dtype) {  // any dtype, any device: a plain copy
    y.copy_from(x);
    return;
  }
  if (x.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, "x", x);
    ops_detail::check_cuda_f32_or_bf16(op, "y", y);
    cuda::CastParams p;
    p.x = x.raw();
    p.y = y.raw();
    p.n = x.numel();
    p.x_bf16 = x.dtype() == DType::BF16;
    p.y_bf16 = y.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::cast(p);
    return;
  }
  const int64_t n = x.numel();
  visit_cast_dtype(op, "x", x, [&](auto src_tag) {
    using S = decltype(src_tag);
    visit_cast_dtype(op, "y", y, [&](auto dst_tag) {
      using D = decltype(dst_tag);
      const S* src = x.data<S>();
      D* dst = y.data<D>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) dst[i] = cast_from_double<D>(to_double(src[i]));
    });
  });
}

}  // namespace moelab
