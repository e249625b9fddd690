// The aux-loss-free bias update (MODEL.md, "Load balancing"): argument checks + dispatch, and the
// CPU reference (the specification the CUDA kernel matches bit for bit).
#include "core/ops/moe_bias.h"

#include <cmath>

#include "core/ops/op_util.h"
#include "cuda/moe_bias.h"

namespace moelab {

namespace ref {

template <typename T>
void moe_bias_update(const double* load, double speed, T* bias, int64_t E) {
  // One thread, index order, in double: the same mean for any thread count and on the GPU.
  double sum = 0.0;
  for (int64_t i = 0; i < E; ++i) sum += load[i];
  const double mean = sum / static_cast<double>(E);
  const T step = static_cast<T>(speed);
  for (int64_t i = 0; i < E; ++i) {
    const double l = load[i];
    const int sign = (mean > l) - (mean < l);  // sign(mean - load_i), 0 at the mean
    bias[i] += step * static_cast<T>(sign);
  }
}

template void moe_bias_update<float>(const double*, double, float*, int64_t);
template void moe_bias_update<double>(const double*, double, double*, int64_t);

}  // namespace ref

void moe_bias_update(const Exec& ex, const Tensor& load, double speed, const Tensor& bias) {
  const char* op = "moe_bias_update";
  check_ndim(op, "bias", bias, 1, 1);
  const int64_t E = bias.size(0);
  MOELAB_CHECK(E >= 1, op, ": bias is ", bias.str(), ", expected [E] with at least one expert");
  check_shape(op, "load", load, {E});
  check_dtype(op, "load", load, DType::F64);
  check_same_device(op, {{"load", &load}, {"bias", &bias}});
  MOELAB_CHECK(std::isfinite(speed) && speed >= 0, op, ": speed = ", speed, ", expected a finite step >= 0");
  if (bias.device() == Device::CUDA) {
    check_dtype(op, "bias", bias, DType::F32);
    cuda::MoeBiasUpdateParams p;
    p.load = load.data<double>();
    p.bias = bias.data<float>();
    p.E = E;
    p.speed = static_cast<float>(speed);  // ref::moe_bias_update<float>'s step
    p.stream = ex.stream;
    cuda::moe_bias_update(p);
    return;
  }
  const double* l = load.data<double>();
  for (int64_t i = 0; i < E; ++i)
    MOELAB_CHECK(std::isfinite(l[i]) && l[i] >= 0, op, ": load[", i, "] = ", l[i], ", expected a finite count >= 0");
  ops_detail::dispatch_cpu_float(op, bias, [&](auto tag) {
    using T = decltype(tag);
    ref::moe_bias_update<T>(l, speed, bias.data<T>(), E);
  });
}

}  // namespace moelab
