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

// A CUDA fill of t but for the distribution: the caller sets a, b and normal.
cuda::FillRandomParams cuda_fill_params(const Tensor& t, uint64_t seed, uint64_t offset) {
  cuda::FillRandomParams p;
  p.out = t.data<float>();
  p.n = t.numel();
  p.seed = seed;
  p.offset = offset;
  p.stream = nullptr;  // the fills take no Exec: the default stream
  return p;
}
}  // namespace

void fill_uniform(const Tensor& t, uint64_t seed, uint64_t offset, float lo, float hi) {
  check_fill("fill_uniform", t);
  if (t.device() == Device::CUDA) {
    cuda::FillRandomParams p = cuda_fill_params(t, seed, offset);
    p.a = lo;
    p.b = hi;
    p.normal = false;
    cuda::fill_random_f32(p);
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
    cuda::FillRandomParams p = cuda_fill_params(t, seed, offset);
    p.a = mean;
    p.b = std;
    p.normal = true;
    cuda::fill_random_f32(p);
    return;
  }
  auto draw = [&](uint64_t i) { const double s = std * philox::normal(seed, offset + i); return mean + s; };
  if (t.dtype() == DType::F32) fill_cpu<float>(t, draw);
  else fill_cpu<double>(t, draw);
}

float uniform_at(uint64_t seed, uint64_t g) { return philox::uniform(seed, g); }

std::array<uint32_t, 4> philox_block(uint64_t seed, uint64_t counter, uint32_t stream, uint32_t extra) {
  const philox::U32x4 r = philox::philox4x32_10(
      philox::U32x4{{static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32), stream, extra}},
      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return {r.v[0], r.v[1], r.v[2], r.v[3]};
}

}  // namespace moelab
