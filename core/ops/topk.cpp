// Top-k: argument checks + dispatch, and the CPU reference (the specification).
#include "core/ops/topk.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/ops/op_util.h"
#include "cuda/topk.h"

namespace moelab {

namespace ref {

template <typename T>
void topk_forward(const T* x, T* values, int32_t* indices, int64_t rows, int64_t E, int64_t K) {
#pragma omp parallel
  {
    std::vector<int32_t> order(E);  // candidate indices of one row
#pragma omp for schedule(static)
    for (int64_t n = 0; n < rows; ++n) {
      const T* xr = x + n * E;
      // "a ranks before b": a strict total order (ties go to the lower index), so the selection
      // and its order are the same whatever the sort algorithm does internally.
      auto before = [xr](int32_t a, int32_t b) {
        const bool nan_a = std::isnan(xr[a]), nan_b = std::isnan(xr[b]);
        if (nan_a != nan_b) return nan_a;
        if (!nan_a && xr[a] != xr[b]) return xr[a] > xr[b];
        return a < b;
      };
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + K, order.end(), before);
      for (int64_t j = 0; j < K; ++j) {
        indices[n * K + j] = order[j];
        values[n * K + j] = xr[order[j]];
      }
    }
  }
}

template <typename T>
void topk_backward(const T* grad_values, const int32_t* indices, T* grad_x, int64_t rows, int64_t E, int64_t K) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    T* gx = grad_x + n * E;
    std::fill_n(gx, E, T(0));
    // += (not =): the adjoint of a gather, so a repeated index (which topk_forward never produces)
    // still gets the sum of its gradients.
    for (int64_t j = 0; j < K; ++j) gx[indices[n * K + j]] += grad_values[n * K + j];
  }
}

template void topk_forward<float>(const float*, float*, int32_t*, int64_t, int64_t, int64_t);
template void topk_forward<double>(const double*, double*, int32_t*, int64_t, int64_t, int64_t);
template void topk_backward<float>(const float*, const int32_t*, float*, int64_t, int64_t, int64_t);
template void topk_backward<double>(const double*, const int32_t*, double*, int64_t, int64_t, int64_t);

}  // namespace ref

namespace {
void check_k(const char* op, int64_t k, const char* x_name, const Tensor& x) {
  const int64_t E = x.size(1);
  MOELAB_CHECK(k >= 1 && k <= E, op, ": k is ", k, " but ", x_name, " ", x.str(), " has E = ", E,
               " entries per row; expected 1 <= k <= E");
  MOELAB_CHECK(E <= std::numeric_limits<int32_t>::max(), op, ": E = ", E, " does not fit the i32 indices");
}
}  // namespace

void topk_forward(const Exec& ex, const Tensor& x, int64_t k, const Tensor& values, const Tensor& indices) {
  const char* op = "topk_forward";
  check_ndim(op, "x", x, 2, 2);
  check_k(op, k, "x", x);
  const int64_t N = x.size(0), E = x.size(1);
  check_shape(op, "values", values, {N, k});
  check_shape(op, "indices", indices, {N, k});
  check_dtype(op, "values", values, x.dtype());
  check_dtype(op, "indices", indices, DType::I32);
  check_same_device(op, {{"x", &x}, {"values", &values}, {"indices", &indices}});
  if (x.device() == Device::CUDA) {
    check_dtype(op, "x", x, DType::F32);
    cuda::TopkForwardParams p;
    p.x = x.data<float>();
    p.values = values.data<float>();
    p.indices = indices.data<int32_t>();
    p.rows = N; p.E = E; p.K = k;
    p.stream = ex.stream;
    cuda::topk_forward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    ref::topk_forward<T>(x.data<T>(), values.data<T>(), indices.data<int32_t>(), N, E, k);
  });
}

void topk_backward(const Exec& ex, const Tensor& grad_values, const Tensor& indices, const Tensor& grad_x) {
  const char* op = "topk_backward";
  check_ndim(op, "grad_values", grad_values, 2, 2);
  check_ndim(op, "grad_x", grad_x, 2, 2);
  const int64_t N = grad_values.size(0), K = grad_values.size(1), E = grad_x.size(1);
  check_shape(op, "grad_x", grad_x, {N, E});
  check_k(op, K, "grad_x", grad_x);
  check_shape(op, "indices", indices, {N, K});
  check_dtype(op, "indices", indices, DType::I32);
  check_dtype(op, "grad_x", grad_x, grad_values.dtype());
  check_same_device(op, {{"grad_values", &grad_values}, {"indices", &indices}, {"grad_x", &grad_x}});
  if (grad_x.device() == Device::CUDA) {
    check_dtype(op, "grad_values", grad_values, DType::F32);
    cuda::TopkBackwardParams p;
    p.grad_values = grad_values.data<float>();
    p.indices = indices.data<int32_t>();
    p.grad_x = grad_x.data<float>();
    p.rows = N; p.E = E; p.K = K;
    p.stream = ex.stream;
    cuda::topk_backward(p);
    return;
  }
  // Checked here, before the parallel loop: an exception must not leave an OpenMP region.
  const int32_t* idx = indices.data<int32_t>();
  for (int64_t i = 0; i < N * K; ++i)
    MOELAB_CHECK(idx[i] >= 0 && idx[i] < E, op, ": indices[", i / K, ", ", i % K, "] is ", idx[i],
                 ", expected an index in [0, E = ", E, ")");
  ops_detail::dispatch_cpu_float(op, grad_values, [&](auto tag) {
    using T = decltype(tag);
    ref::topk_backward<T>(grad_values.data<T>(), idx, grad_x.data<T>(), N, E, K);
  });
}

}  // namespace moelab
