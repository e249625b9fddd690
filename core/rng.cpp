#include "core/rng.h"

#include "cuda/philox.h"
#include "cuda/rng.h"

namespace moelab {

namespace {
template <typename T, typename Draw>
void fill_cpu(const Tensor& t, Draw draw) {
  T* p = t.data<T>();
  const int64_t n = t.numel();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) p[i] = static_cast<T>(draw(static_cast<uint64_t>(i)));
}

void check_fill(const char* op, const Tensor& t) {
  check_defined(op, "t", t);
  if (t.device() == Device::CUDA) check_dtype(op, "t", t, DType::F32);
  else MOELAB_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64, op, ": t is ", t.str(), ", expected f32 or f64");
}
}  // namespace

void fill_uniform(const Tensor& t, uint64_t seed, uint64_t offset, float lo, float hi) {
  check_fill("fill_uniform", t);
  if (t.device() == Device::CUDA) {
    cuda::fill_random_f32({t.data<float>(), t.numel(), seed, offset, lo, hi, /*normal=*/false, nullptr});
    return;
  }
  const float scale = hi - lo;
  // lo + scale * u in float, without FMA contraction (ISO C++ mode), as the CUDA kernel does.
  auto draw = [&](uint64_t i) { const float s = scale * philox::uniform(seed, offset + i); return lo + s; };
  if (t.dtype() == DType::F32) fill_cpu<float>(t, draw);
  else fill_cpu<double>(t, draw);
}

void fill_normal(const Tensor& t, uint64_t seed, uint64_t offset, double mean, double std) {
  check_fill("fill_normal", t);
  if (t.device() == Device::CUDA) {
    cuda::fill_random_f32({t.data<float>(), t.numel(), seed, offset, mean, std, /*normal=*/true, nullptr});
    return;
  }
  auto draw = [&](uint64_t i) { const double s = std * philox::normal(seed, offset + i); return mean + s; };
  if (t.dtype() == DType::F32) fill_cpu<float>(t, draw);
  else fill_cpu<double>(t, draw);
}

}  // namespace moelab
