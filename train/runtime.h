// Where and in which precision a command runs (train.device, train.precision; `--device` on the
// command line): the device, the activation dtype, and on CUDA the GpuContext (cuBLASLt) that the
// layers reach through Context::gpu. DESIGN.md, "Precision":
//   cpu            fp32 everything
//   cpu bf16       the GEMMs of the Linear layers and the LM head on bf16 operands with f32 sums
//                  (core/ops/bf16_matmul.h); activations, attention, norms, softmax, router and
//                  losses f32; f32 gradients, master weights and AdamW
//   cuda fp32      fp32 everything (the tight parity mode of the GPU tests)
//   cuda bf16      bf16 weights (the parameter buffer's compute copy) and activations for matmuls
//                  and attention, f32 accumulation; f32 norms, softmax, router and losses; f32
//                  gradients, f32 master weights and AdamW (precision "auto" on cuda)
//   fp8, fp8_pow2  DeepSeek-V3's FP8 training (core/ops/fp8_matmul.h): the Linear GEMMs (attention
//                  projections, experts, shared experts, dense MLPs, the MTP projection) take e4m3
//                  operands with 1x128-tile / 128x128-block scales (fp8_pow2: power-of-two scales)
//                  in forward and both backward GEMMs; embedding, head, router, norms, attention
//                  core and gating as above. CPU: f32 around an exact emulation of those GEMMs;
//                  CUDA: bf16 around them
#pragma once

#include <memory>
#include <string>

#include "core/gpu_context.h"
#include "core/nn/context.h"
#include "core/nn/model.h"

namespace moelab {

struct Runtime {
  Device device = Device::CPU;
  DType act = DType::F32;            // activation dtype: f32, or bf16 (mixed precision on CUDA)
  Fp8Recipe fp8;                     // the Linear GEMMs in FP8
  bool cpu_bf16 = false;             // the CPU's bf16 GEMM operands (precision bf16 on the CPU)
  std::unique_ptr<GpuContext> gpu;   // set on CUDA

  Context context(Arena& arena, int64_t batch, int64_t seq_len) const {
    Context ctx{&arena, act, batch, seq_len, gpu.get()};
    ctx.fp8 = fp8;
    ctx.cpu_bf16 = cpu_bf16;
    return ctx;
  }
  // For ops outside a model step (a GEMM probe, one layer's attention): no scratch.
  Exec exec() const { return Exec{nullptr, gpu.get(), nullptr}; }
  Tensor upload(const Tensor& host) const { return device == Device::CPU ? host : host.to(device); }
  std::string describe() const;      // "cpu fp32", "cuda bf16 (f32 master weights) on NVIDIA H100 ..."
  void synchronize() const;          // waits for the GPU's queued work (timing); a no-op on the CPU
  // The activation arena's size for a step whose layers count `predicted` bytes of activations
  // (ModelInfo::activation_bytes(), core/nn/cost.h: every tensor forward and backward allocate, an
  // upper bound of the arena's peak on one process). CPU: a virtual reservation (only the pages used
  // are touched) of 8 GiB, or of the prediction plus the CUDA margin when that is more (a model
  // whose step needs more than 8 GiB). CUDA: real memory, so the prediction plus 10% and 64 MiB
  // (runtime.cpp says why), at most the free memory less 1 GiB; the peak used is printed at the end
  // of a run.
  size_t arena_bytes(double predicted) const;
};

// device: "cpu" | "cuda"; precision: "auto" | "fp32" | "bf16" | "fp8" | "fp8_pow2". Throws naming a bad value, or when
// CUDA is asked for but not built or no GPU is visible.
Runtime make_runtime(const std::string& device, const std::string& precision);

// A freshly initialised model on the runtime's device (f32 master weights, plus the bf16 compute
// copy in mixed precision): the same weights on every device for the same seed.
std::unique_ptr<Model> new_model(const ModelConfig& cfg, uint64_t seed, const Runtime& rt);
// The same model on the runtime's device: `model` (f32, on the CPU, e.g. from a checkpoint) itself
// when that is where it runs, else a copy of its parameters and buffers.
std::unique_ptr<Model> place_model(std::unique_ptr<Model> model, const Runtime& rt);

}  // namespace moelab
