// AdamW: argument checks + dispatch, and the CPU reference (the specification).
#include "core/ops/adamw.h"

#include <cmath>

#include "core/ops/op_util.h"
#include "cuda/adamw.h"

namespace moelab {

namespace ref {

template <typename T>
void adamw_step(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWParams& hp) {
  const double t = static_cast<double>(hp.step);
  const T decay = static_cast<T>(1.0 - hp.lr * hp.weight_decay);
  const T b1 = static_cast<T>(hp.beta1), b2 = static_cast<T>(hp.beta2);
  const T step_size = static_cast<T>(hp.lr / (1.0 - std::pow(hp.beta1, t)));     // lr / bias_correction1
  const T bc2_sqrt = static_cast<T>(std::sqrt(1.0 - std::pow(hp.beta2, t)));     // sqrt(bias_correction2)
  const T eps = static_cast<T>(hp.eps);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i];
    m[i] = b1 * m[i] + (T(1) - b1) * g;
    v[i] = b2 * v[i] + (T(1) - b2) * g * g;
    param[i] = param[i] * decay - step_size * m[i] / (std::sqrt(v[i]) / bc2_sqrt + eps);
  }
}

template void adamw_step<float>(float*, const float*, float*, float*, int64_t, const AdamWParams&);
template void adamw_step<double>(double*, const double*, double*, double*, int64_t, const AdamWParams&);

}  // namespace ref

void adamw_step(const Exec& ex, const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& hp, const Tensor& param_copy) {
  const char* op = "adamw_step";
  check_defined(op, "param", param);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"grad", &grad}, {"m", &m}, {"v", &v}}) {
    check_shape(op, name, *t, param.shape());
    check_dtype(op, name, *t, param.dtype());
  }
  check_same_device(op, {{"param", &param}, {"grad", &grad}, {"m", &m}, {"v", &v}, {"param_copy", &param_copy}});
  if (param_copy.defined()) {
    MOELAB_CHECK(param_copy.numel() == param.numel(), op, ": param_copy is ", param_copy.str(), ", expected ",
                 param.numel(), " elements (param is ", param.str(), ")");
    MOELAB_CHECK(param_copy.dtype() == DType::F32 || param_copy.dtype() == DType::BF16, op, ": param_copy is ",
                 param_copy.str(), ", expected dtype f32 or bf16");
  }
  MOELAB_CHECK(hp.step >= 1, op, ": step is ", hp.step, ", expected >= 1 (the first update is step 1)");
  MOELAB_CHECK(std::isfinite(hp.lr) && hp.lr >= 0, op, ": lr is ", hp.lr, ", expected a finite value >= 0");
  MOELAB_CHECK(hp.beta1 >= 0 && hp.beta1 < 1, op, ": beta1 is ", hp.beta1, ", expected a value in [0, 1)");
  MOELAB_CHECK(hp.beta2 >= 0 && hp.beta2 < 1, op, ": beta2 is ", hp.beta2, ", expected a value in [0, 1)");
  MOELAB_CHECK(std::isfinite(hp.eps) && hp.eps >= 0, op, ": eps is ", hp.eps, ", expected a finite value >= 0");
  MOELAB_CHECK(std::isfinite(hp.weight_decay) && hp.weight_decay >= 0, op, ": weight_decay is ", hp.weight_decay,
               ", expected a finite value >= 0");
  if (param.device() == Device::CUDA) {
    check_dtype(op, "param", param, DType::F32);  // grad, m, v were checked against param's dtype
    cuda::AdamwParams p;
    p.param = param.data<float>();
    p.grad = grad.data<float>();
    p.m = m.data<float>();
    p.v = v.data<float>();
    p.param_copy = param_copy.defined() ? param_copy.raw() : nullptr;
    p.copy_bf16 = param_copy.defined() && param_copy.dtype() == DType::BF16;
    p.n = param.numel();
    // The scalars exactly as ref::adamw_step<float> rounds them.
    const double t = static_cast<double>(hp.step);
    p.decay = static_cast<float>(1.0 - hp.lr * hp.weight_decay);
    p.beta1 = static_cast<float>(hp.beta1);
    p.beta2 = static_cast<float>(hp.beta2);
    p.step_size = static_cast<float>(hp.lr / (1.0 - std::pow(hp.beta1, t)));
    p.bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(hp.beta2, t)));
    p.eps = static_cast<float>(hp.eps);
    p.stream = ex.stream;
    cuda::adamw_step(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, param, [&](auto tag) {
    using T = decltype(tag);
    ref::adamw_step<T>(param.data<T>(), grad.data<T>(), m.data<T>(), v.data<T>(), param.numel(), hp);
    if (!param_copy.defined()) return;
    const T* p = param.data<T>();
    const int64_t n = param.numel();
    if (param_copy.dtype() == DType::BF16) {
      bf16_t* c = param_copy.data<bf16_t>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) c[i] = from_float<bf16_t>(static_cast<float>(p[i]));
    } else {
      float* c = param_copy.data<float>();
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < n; ++i) c[i] = static_cast<float>(p[i]);
    }
  });
}

}  // namespace moelab
