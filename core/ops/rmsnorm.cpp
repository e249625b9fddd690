// RMSNorm: argument checks + dispatch, and the CPU reference (the specification).
#include "core/ops/rmsnorm.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "core/ops/op_util.h"
#include "core/ops/vec_math.h"
#include "cuda/rmsnorm.h"

namespace moelab {

namespace ref {

template <typename T>
void rmsnorm_forward(const T* x, const T* weight, T eps, T* y, T* rstd, int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    T* yr = y + r * dim;
    const T sum_sq = lane_sum<T>(dim, [&](int64_t d) { return xr[d] * xr[d]; });
    const T s = T(1) / std::sqrt(sum_sq / static_cast<T>(dim) + eps);
    rstd[r] = s;
    for (int64_t d = 0; d < dim; ++d) yr[d] = xr[d] * s * weight[d];
  }
}

// With xhat = x * rstd and g = grad_y * weight:
//   grad_x = rstd * (g - xhat * mean_d(g * xhat)),   grad_weight += sum_rows(grad_y * xhat)
template <typename T>
void rmsnorm_backward(const T* grad_y, const T* x, const T* weight, const T* rstd, T* grad_x, T* grad_weight,
                      int64_t rows, int64_t dim) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* gy = grad_y + r * dim;
    const T* xr = x + r * dim;
    const T dot = rstd[r] * lane_sum<T>(dim, [&](int64_t d) { return gy[d] * weight[d] * xr[d]; });  // sum_d g * xhat
    const T mean_dot = dot / static_cast<T>(dim);
    for (int64_t d = 0; d < dim; ++d)
      grad_x[r * dim + d] = rstd[r] * (gy[d] * weight[d] - xr[d] * rstd[r] * mean_dot);
  }
  // grad_weight: each thread owns a block of columns and walks the rows in order, so the sum is
  // the same for any thread count.
  constexpr int64_t kCols = 64;
  const int64_t col_blocks = (dim + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int64_t cb = 0; cb < col_blocks; ++cb) {
    const int64_t d0 = cb * kCols, d1 = std::min(dim, d0 + kCols);
    T acc[kCols] = {};
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t d = d0; d < d1; ++d) acc[d - d0] += grad_y[r * dim + d] * x[r * dim + d] * rstd[r];
    for (int64_t d = d0; d < d1; ++d) grad_weight[d] += acc[d - d0];
  }
}

template void rmsnorm_forward<float>(const float*, const float*, float, float*, float*, int64_t, int64_t);
template void rmsnorm_forward<double>(const double*, const double*, double, double*, double*, int64_t, int64_t);
template void rmsnorm_backward<float>(const float*, const float*, const float*, const float*, float*, float*, int64_t, int64_t);
template void rmsnorm_backward<double>(const double*, const double*, const double*, const double*, double*, double*, int64_t,
                                       int64_t);

}  // namespace ref

namespace {
// Shapes shared by forward and backward; returns {rows, dim}.
std::pair<int64_t, int64_t> check_rmsnorm_shapes(const char* op, const Tensor& x, const Tensor& weight, const Tensor& rstd) {
  check_ndim(op, "x", x, 1, 4);
  const int64_t dim = x.size(-1), rows = ops_detail::rows_of(x);
  MOELAB_CHECK(dim > 0, op, ": x is ", x.str(), ", its last dim must be > 0");
  check_shape(op, "weight", weight, {dim});
  check_shape(op, "rstd", rstd, {rows});
  return {rows, dim};
}

void check_cuda_dtypes(const char* op, const Tensor& x, const Tensor& weight, const Tensor& rstd) {
  ops_detail::check_cuda_f32_or_bf16(op, "x", x);
  check_dtype(op, "weight", weight, DType::F32);
  check_dtype(op, "rstd", rstd, DType::F32);
}
}  // namespace

void rmsnorm_forward(const Exec& ex, const Tensor& x, const Tensor& weight, float eps, const Tensor& y,
                     const Tensor& rstd) {
  const char* op = "rmsnorm_forward";
  int64_t rows, dim;  // named (not bound): lambdas capture them
  std::tie(rows, dim) = check_rmsnorm_shapes(op, x, weight, rstd);
  check_shape(op, "y", y, x.shape());
  check_same_device(op, {{"x", &x}, {"weight", &weight}, {"y", &y}, {"rstd", &rstd}});
  check_dtype(op, "y", y, x.dtype());
  MOELAB_CHECK(eps >= 0.0f, op, ": eps is ", eps, ", expected >= 0");
  if (x.device() == Device::CUDA) {
    check_cuda_dtypes(op, x, weight, rstd);
    cuda::RmsnormForwardParams p;
    p.x = x.raw();
    p.weight = weight.data<float>();
    p.y = y.raw();
    p.rstd = rstd.data<float>();
    p.rows = rows; p.dim = dim;
    p.eps = eps;
    p.bf16 = x.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::rmsnorm_forward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    check_dtype(op, "weight", weight, x.dtype());
    check_dtype(op, "rstd", rstd, x.dtype());
    ref::rmsnorm_forward<T>(x.data<T>(), weight.data<T>(), static_cast<T>(eps), y.data<T>(), rstd.data<T>(), rows, dim);
  });
}

void rmsnorm_backward(const Exec& ex, const Tensor& grad_y, const Tensor& x, const Tensor& weight, const Tensor& rstd,
                      const Tensor& grad_x, const Tensor& grad_weight) {
  const char* op = "rmsnorm_backward";
  int64_t rows, dim;  // named (not bound): lambdas capture them
  std::tie(rows, dim) = check_rmsnorm_shapes(op, x, weight, rstd);
  check_shape(op, "grad_y", grad_y, x.shape());
  check_shape(op, "grad_x", grad_x, x.shape());
  check_shape(op, "grad_weight", grad_weight, weight.shape());
  check_same_device(op, {{"grad_y", &grad_y}, {"x", &x}, {"weight", &weight}, {"rstd", &rstd}, {"grad_x", &grad_x},
                         {"grad_weight", &grad_weight}});
  check_dtype(op, "grad_y", grad_y, x.dtype());
  check_dtype(op, "grad_x", grad_x, x.dtype());
  if (x.device() == Device::CUDA) {
    check_cuda_dtypes(op, x, weight, rstd);
    check_dtype(op, "grad_weight", grad_weight, DType::F32);
    cuda::RmsnormBackwardParams p;
    p.grad_y = grad_y.raw();
    p.x = x.raw();
    p.weight = weight.data<float>();
    p.rstd = rstd.data<float>();
    p.grad_x = grad_x.raw();
    p.grad_weight = grad_weight.data<float>();
    p.rows = rows; p.dim = dim;
    p.bf16 = x.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::rmsnorm_backward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    check_dtype(op, "weight", weight, x.dtype());
    check_dtype(op, "rstd", rstd, x.dtype());
    check_dtype(op, "grad_weight", grad_weight, x.dtype());
    ref::rmsnorm_backward<T>(grad_y.data<T>(), x.data<T>(), weight.data<T>(), rstd.data<T>(), grad_x.data<T>(),
                             grad_weight.data<T>(), rows, dim);
  });
}

}  // namespace moelab
