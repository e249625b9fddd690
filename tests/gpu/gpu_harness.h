// Helpers of the GPU suites (tests/README.md, "GPU tests"): guarded device outputs (a guard row
// before and after, which must survive untouched), host<->device conversions, and the bf16
// rounding that lets the CPU reference see exactly the inputs the GPU sees.
#pragma once

#include "core/arena.h"
#include "core/exec.h"
#include "core/gpu_context.h"
#include "core/tensor.h"
#include "tests/harness.h"

namespace moelab::testing {

constexpr float kGuard = 12288.0f;  // around every output; must survive untouched (exact in bf16, f32 and i32)

// A CUDA tensor of `shape` and `dtype` inside a buffer with one guard row before and after it.
struct Guarded {
  Tensor buffer, view;
  Guarded(const Shape& shape, DType dtype) {
    const int64_t row = shape.numel() / shape[0];
    Tensor host = Tensor::empty({shape[0] + 2, row}, DType::F32);
    host.fill(kGuard);
    buffer = dtype == DType::I32 ? host.to(DType::I32).to(Device::CUDA) : host.to(dtype).to(Device::CUDA);
    view = buffer.slice(1, shape[0] + 1).reshape(shape);
  }
  bool guards_intact() const {
    Tensor h = buffer.to(Device::CPU).to(buffer.dtype() == DType::I32 ? DType::I32 : DType::F32);
    const int64_t row = h.size(1), n = h.numel();
    for (int64_t i = 0; i < row; ++i) {
      const double a = h.dtype() == DType::I32 ? h.data<int32_t>()[i] : h.data<float>()[i];
      const double b = h.dtype() == DType::I32 ? h.data<int32_t>()[n - 1 - i] : h.data<float>()[n - 1 - i];
      if (a != kGuard || b != kGuard) return false;
    }
    return true;
  }
  Tensor host_f32() const { return view.to(Device::CPU).to(view.dtype() == DType::I32 ? DType::I32 : DType::F32); }
};

// The Exec of the GPU suites: the default stream, one GpuContext and 256 MiB of CUDA scratch for
// the whole test binary, made at the first use (inside a GpuTest, so only where a GPU is visible).
inline const Exec& gpu_exec() {
  static GpuContext gpu;
  static Arena scratch(size_t{256} << 20, Device::CUDA);
  static const Exec ex{nullptr, &gpu, &scratch};
  return ex;
}

// x rounded to bf16 and back (f32): the values a bf16 GPU tensor made from x holds.
inline Tensor bf16_round(const Tensor& x) { return x.to(DType::BF16).to(DType::F32); }
// A CPU f32 tensor onto the GPU in `dtype` (f32 or bf16).
inline Tensor to_gpu(const Tensor& x, DType dtype) { return x.to(dtype).to(Device::CUDA); }
// A GPU tensor back as CPU f32 (i32 stays i32).
inline Tensor to_host(const Tensor& x) {
  return x.to(Device::CPU).to(x.dtype() == DType::I32 ? DType::I32 : DType::F32);
}
// The tolerances of tests/README.md for a CUDA output against the CPU f32 reference.
inline double act_atol(DType act) { return act == DType::BF16 ? 2e-2 : 1e-5; }
inline double act_rtol(DType act) { return act == DType::BF16 ? 1.6e-2 : 1e-5; }

}  // namespace moelab::testing
