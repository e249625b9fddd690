// Gradient norm and clipping: argument checks + dispatch, and the CPU reference.
#include "core/ops/grad_norm.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/ops/op_util.h"
#include "core/ops/vec_math.h"
#include "cuda/grad_norm.h"
#include "cuda/runtime.h"

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
    const T* xc = x + c * kChunk;
    partial[c] = lane_sum<double>(std::min(n - c * kChunk, kChunk),
                                  [&](int64_t i) { return static_cast<double>(xc[i]) * xc[i]; });
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
// Every tensor defined and all on one device (a mix names the first tensor on the other device);
// on CUDA every tensor is f32. The name in messages is "grads[i]". Returns the device.
Device check_grads(const char* op, const std::vector<Tensor>& grads) {
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::string name = "grads[" + std::to_string(i) + "]";
    check_defined(op, name.c_str(), grads[i]);
    MOELAB_CHECK(grads[i].device() == grads[0].device(), op, ": ", name, " is ", grads[i].str(), " but grads[0] is on ",
                 device_name(grads[0].device()), ": every tensor must be on one device");
    if (grads[i].device() == Device::CUDA) {
      check_dtype(op, name.c_str(), grads[i], DType::F32);
    }
  }
  return grads.empty() ? Device::CPU : grads[0].device();
}

// Each tensor's sum of squares on the device (cuda/grad_norm.h: double, fixed order), the per-tensor
// sums copied back and added in list order on the host, as the CPU path does.
double grad_norm_cuda(const Exec& ex, const char* op, const std::vector<Tensor>& grads) {
  const int64_t count = static_cast<int64_t>(grads.size());
  // Scratch from the step's arena (a device allocation here would synchronise the device): the
  // partials (reused tensor after tensor, in stream order) and one sum per tensor.
  ScratchScope scratch(ex, op);
  const Tensor workspace = scratch.take({cuda::kGradNormBlocks + count}, DType::F64);
  double* partials = workspace.data<double>();
  double* sums = partials + cuda::kGradNormBlocks;
  for (int64_t i = 0; i < count; ++i) {
    cuda::GradSumSquaresParams p;
    p.x = grads[i].data<float>();
    p.n = grads[i].numel();
    p.partials = partials;
    p.result = sums + i;
    p.stream = ex.stream;
    cuda::grad_sum_squares(p);
  }
  std::vector<double> host(count);
  cuda::memcpy_d2h(host.data(), sums, count * sizeof(double));
  double total = 0;
  for (double s : host) total += s;
  return total;
}

double sum_squares_unchecked(const Exec& ex, const char* op, const std::vector<Tensor>& grads, Device device) {
  if (device == Device::CUDA) {
    return grad_norm_cuda(ex, op, grads);
  }
  double total = 0;  // tensors in list order, so the sum is deterministic too
  for (const Tensor& g : grads)
    ops_detail::dispatch_cpu_float(op, g, [&](auto tag) {
      using T = decltype(tag);
      total += ref::grad_sum_squares<T>(g.data<T>(), g.numel());
    });
  return total;
}

void scale_unchecked(const Exec& ex, const char* op, const std::vector<Tensor>& grads, Device device, double factor) {
  if (device == Device::CUDA) {
    for (const Tensor& g : grads) {
      cuda::GradScaleParams p;
      p.x = g.data<float>();
      p.n = g.numel();
      p.factor = static_cast<float>(factor);
      p.stream = ex.stream;
      cuda::grad_scale(p);
    }
    return;
  }
  for (const Tensor& g : grads)
    ops_detail::dispatch_cpu_float(op, g, [&](auto tag) {
      using T = decltype(tag);
      ref::grad_scale<T>(g.data<T>(), g.numel(), static_cast<T>(factor));
    });
}

void clip_unchecked(const Exec& ex, const char* op, const std::vector<Tensor>& grads, Device device, double norm,
                    double max_norm) {
  if (!std::isfinite(norm)) return;  // left to the trainer's non-finite guard
  const double coef = max_norm / (norm + 1e-6);  // +1e-6: PyTorch's guard against norm = 0
  if (coef >= 1.0) return;                       // below the threshold: the gradients stay as they are
  scale_unchecked(ex, op, grads, device, coef);
}
}  // namespace

double grad_sum_squares(const Exec& ex, const std::vector<Tensor>& grads) {
  const char* op = "grad_sum_squares";
  return sum_squares_unchecked(ex, op, grads, check_grads(op, grads));
}

double grad_norm(const Exec& ex, const std::vector<Tensor>& grads) {
  const char* op = "grad_norm";
  return std::sqrt(sum_squares_unchecked(ex, op, grads, check_grads(op, grads)));
}

double clip_grad_norm(const Exec& ex, const std::vector<Tensor>& grads, double max_norm) {
  const char* op = "clip_grad_norm";
  MOELAB_CHECK(max_norm > 0, op, ": max_norm is ", max_norm, ", expected > 0");
  const Device device = check_grads(op, grads);
  const double norm = std::sqrt(sum_squares_unchecked(ex, op, grads, device));
  clip_unchecked(ex, op, grads, device, norm, max_norm);
  return norm;
}

void clip_grads_to_norm(const Exec& ex, const std::vector<Tensor>& grads, double norm, double max_norm) {
  const char* op = "clip_grads_to_norm";
  MOELAB_CHECK(max_norm > 0, op, ": max_norm is ", max_norm, ", expected > 0");
  clip_unchecked(ex, op, grads, check_grads(op, grads), norm, max_norm);
}

void scale_grads(const Exec& ex, const std::vector<Tensor>& grads, double factor) {
  const char* op = "scale_grads";
  scale_unchecked(ex, op, grads, check_grads(op, grads), factor);
}

}  // namespace moelab
