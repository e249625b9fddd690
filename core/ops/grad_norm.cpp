// Gradient norm and clipping: argument checks + dispatch, and the CPU reference.
#include "core/ops/grad_norm.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/ops/op_util.h"

namespace moelab {

namespace ref {

// Chunk boundaries depend only on n, never on the thread count; that makes the sum deterministic.
constexpr int64_t kChunk = 4096;

template <typename T>
double grad_sum_squares(const T* x, int64_t n) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(chunks);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    double acc = 0;
    for (int64_t i = c * kChunk; i < std::min(n, (c + 1) * kChunk); ++i) acc += static_cast<double>(x[i]) * x[i];
    partial[c] = acc;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

template <typename T>
void grad_scale(T* x, int64_t n, T factor) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

template double grad_sum_squares<float>(const float*, int64_t);
template double grad_sum_squares<double>(const double*, int64_t);
template void grad_scale<float>(float*, int64_t, float);
template void grad_scale<double>(double*, int64_t, double);

}  // namespace ref

namespace {
// Every tensor defined and on the CPU; the name in messages is "grads[i]".
void check_grads(const char* op, const std::vector<Tensor>& grads) {
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::string name = "grads[" + std::to_string(i) + "]";
    check_defined(op, name.c_str(), grads[i]);
    if (grads[i].device() == Device::CUDA) MOELAB_FAIL(op, ": no CUDA kernel yet (", name, " is ", grads[i].str(), ")");
  }
}

double grad_norm_unchecked(const char* op, const std::vector<Tensor>& grads) {
  double total = 0;  // tensors in list order, so the sum is deterministic too
  for (const Tensor& g : grads)
    ops_detail::dispatch_cpu_float(op, g, [&](auto tag) {
      using T = decltype(tag);
      total += ref::grad_sum_squares<T>(g.data<T>(), g.numel());
    });
  return std::sqrt(total);
}
}  // namespace

double grad_norm(const std::vector<Tensor>& grads) {
  const char* op = "grad_norm";
  check_grads(op, grads);
  return grad_norm_unchecked(op, grads);
}

double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm) {
  const char* op = "clip_grad_norm";
  MOELAB_CHECK(max_norm > 0, op, ": max_norm is ", max_norm, ", expected > 0");
  check_grads(op, grads);
  const double norm = grad_norm_unchecked(op, grads);
  if (!std::isfinite(norm)) return norm;  // left to the trainer's non-finite guard
  const double coef = max_norm / (norm + 1e-6);  // +1e-6: PyTorch's guard against norm = 0
  if (coef >= 1.0) return norm;                  // below the threshold: the gradients stay as they are
  for (const Tensor& g : grads)
    ops_detail::dispatch_cpu_float(op, g, [&](auto tag) {
      using T = decltype(tag);
      ref::grad_scale<T>(g.data<T>(), g.numel(), static_cast<T>(coef));
    });
  return norm;
}

}  // namespace moelab
