// Matmul: argument checks + dispatch; on the CPU the GEMMs of cpu_gemm.h (oneDNN for f32, Eigen for
// f64), multi-threaded with OpenMP inside the GEMM.
#include "core/ops/matmul.h"

#include <vector>

#include "core/gpu_context.h"
#include "core/ops/cpu_gemm.h"
#include "core/ops/op_util.h"
#include "cuda/blas.h"

namespace moelab {

namespace ref {

template <typename T>
void matmul_forward(const T* x, const T* w, T* y, int64_t m, int64_t k, int64_t n) {
  gemm<T>(false, true, m, n, k, T(1), x, k, w, k, T(0), y, n);  // y[M, N] = x[M, K] w[N, K]^T
}

template <typename T>
void matmul_backward(const T* grad_y, const T* x, const T* w, T* grad_x, T* grad_w, int64_t m, int64_t k,
                     int64_t n) {
  if (grad_x) gemm<T>(false, false, m, k, n, T(1), grad_y, n, w, k, T(0), grad_x, k);  // [M, N] x [N, K]
  gemm<T>(true, false, n, k, m, T(1), grad_y, n, x, k, T(1), grad_w, k);                // += [N, M] x [M, K]
}

template void matmul_forward<float>(const float*, const float*, float*, int64_t, int64_t, int64_t);
template void matmul_backward<float>(const float*, const float*, const float*, float*, float*, int64_t, int64_t,
                                     int64_t);
template void matmul_forward<double>(const double*, const double*, double*, int64_t, int64_t, int64_t);
template void matmul_backward<double>(const double*, const double*, const double*, double*, double*, int64_t,
                                      int64_t, int64_t);

}  // namespace ref

namespace ops_detail {
MatmulDims check_matmul_shapes(const char* op, const Tensor& x, const Tensor& w) {
  check_ndim(op, "x", x, 1, 4);
  check_ndim(op, "w", w, 2, 2);
  const int64_t k = x.size(-1);
  MOELAB_CHECK(k > 0, op, ": x is ", x.str(), ", its last dim (K) must be > 0");
  MOELAB_CHECK(w.size(1) == k, op, ": w is ", w.str(), ", expected [N, ", k, "] to match the last dim of x ", x.str());
  return {rows_of(x), k, w.size(0)};
}

Shape matmul_output_shape(const Tensor& x, int64_t n) {
  std::vector<int64_t> dims = x.shape().dims();
  dims.back() = n;
  return Shape(dims);
}
}  // namespace ops_detail

namespace {
using ops_detail::check_matmul_shapes;
using ops_detail::matmul_output_shape;

// The CUDA dtypes: x, w and the activation-side tensors share f32 or bf16; grad_w is f32.
cuda::GemmType cuda_act_type(const char* op, const Tensor& x, const Exec& ex) {
  MOELAB_CHECK(ex.gpu != nullptr, op, ": x is ", x.str(), " on CUDA, which needs the GpuContext (core/gpu_context.h) "
               "that owns the cuBLASLt handle: set Exec::gpu (layers have it in their Context)");
  ops_detail::check_cuda_f32_or_bf16(op, "x", x);
  return x.dtype() == DType::BF16 ? cuda::GemmType::BF16 : cuda::GemmType::F32;
}
}  // namespace

void matmul_forward(const Exec& ex, const Tensor& x, const Tensor& w, const Tensor& y) {
  const char* op = "matmul_forward";
  const ops_detail::MatmulDims d = check_matmul_shapes(op, x, w);
  check_shape(op, "y", y, matmul_output_shape(x, d.n));
  check_same_device(op, {{"x", &x}, {"w", &w}, {"y", &y}});
  if (x.device() == Device::CUDA) {
    const cuda::GemmType t = cuda_act_type(op, x, ex);
    check_dtype(op, "w", w, x.dtype());
    check_dtype(op, "y", y, x.dtype());
    // y[M, N] = x[M, K] w[N, K]^T
    cuda::GemmParams p;
    p.a = x.raw();
    p.b = w.raw();
    p.c = y.raw();
    p.m = d.m; p.n = d.n; p.k = d.k;
    p.trans_b = true;
    p.ab_type = p.c_type = t;
    p.stream = ex.stream;
    ex.gpu->blas().gemm(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    check_dtype(op, "w", w, x.dtype());
    check_dtype(op, "y", y, x.dtype());
    ref::matmul_forward<T>(x.data<T>(), w.data<T>(), y.data<T>(), d.m, d.k, d.n);
  });
}

void matmul_backward(const Exec& ex, const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                     const Tensor& grad_w) {
  const char* op = "matmul_backward";
  const ops_detail::MatmulDims d = check_matmul_shapes(op, x, w);
  check_shape(op, "grad_y", grad_y, matmul_output_shape(x, d.n));
  if (grad_x.defined()) check_shape(op, "grad_x", grad_x, x.shape());
  check_shape(op, "grad_w", grad_w, w.shape());
  check_same_device(op, {{"grad_y", &grad_y}, {"x", &x}, {"w", &w}, {"grad_x", &grad_x}, {"grad_w", &grad_w}});
  if (x.device() == Device::CUDA) {
    const cuda::GemmType t = cuda_act_type(op, x, ex);
    check_dtype(op, "grad_y", grad_y, x.dtype());
    check_dtype(op, "w", w, x.dtype());
    if (grad_x.defined()) check_dtype(op, "grad_x", grad_x, x.dtype());
    check_dtype(op, "grad_w", grad_w, DType::F32);
    if (grad_x.defined()) {  // grad_x[M, K] = grad_y[M, N] w[N, K]
      cuda::GemmParams p;
      p.a = grad_y.raw();
      p.b = w.raw();
      p.c = grad_x.raw();
      p.m = d.m; p.n = d.k; p.k = d.n;
      p.ab_type = p.c_type = t;
      p.stream = ex.stream;
      ex.gpu->blas().gemm(p);
    }
    // grad_w[N, K] += grad_y[M, N]^T x[M, K], accumulated in f32
    cuda::GemmParams p;
    p.a = grad_y.raw();
    p.b = x.raw();
    p.c = grad_w.raw();
    p.m = d.n; p.n = d.k; p.k = d.m;
    p.trans_a = true;
    p.ab_type = t;
    p.c_type = cuda::GemmType::F32;
    p.beta = 1.0f;
    p.stream = ex.stream;
    ex.gpu->blas().gemm(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    check_dtype(op, "grad_y", grad_y, x.dtype());
    check_dtype(op, "w", w, x.dtype());
    if (grad_x.defined()) check_dtype(op, "grad_x", grad_x, x.dtype());
    check_dtype(op, "grad_w", grad_w, x.dtype());
    ref::matmul_backward<T>(grad_y.data<T>(), x.data<T>(), w.data<T>(), grad_x.defined() ? grad_x.data<T>() : nullptr,
                            grad_w.data<T>(), d.m, d.k, d.n);
  });
}

}  // namespace moelab
