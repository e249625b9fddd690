// bf16 matmul on the CPU: the GEMMs of the CPU's bf16 mixed precision (train.precision = bf16 on
// the CPU; Runtime in train/runtime.h). The same map and contract as core/ops/matmul.h (Y = X W^T,
// x [M, K], w [N, K], y [M, N]) with every GEMM operand rounded to bf16 (nearest, ties to even)
// and the sums in f32:
//   Fprop  y  = R(x) R(w)^T
//   Dgrad  dx = R(dy) R(w)
//   Wgrad  dw += R(dy)^T R(x)
// A product of two bf16 values (8 significant bits each) is exact in f32, so any f32 GEMM of the
// rounded operands is a bf16 GEMM with f32 accumulation, the arithmetic of the GPU's tensor cores
// and of AVX512-BF16's VDPBF16PS; two implementations differ only in the order of the f32 sums.
// What runs where (bf16_matmul_path() says which one a process uses, for the bench and the logs):
//   oneDNN  on a CPU with bf16 dot-product instructions (AVX512-BF16 or AMX; oneDNN's effective ISA,
//           which DNNL_MAX_CPU_ISA can lower): the operands are converted to bf16 storage in scratch
//           and multiplied by oneDNN's bf16 matmul (its gemm kernels, VDPBF16PS), f32 accumulation
//           and f32 output, the transposes read through strides (no copies), Wgrad accumulated by a
//           sum post-op. One primitive per GEMM, weight shape and thread count serves every row
//           count M (the MoE experts' change every step), created on first use and kept for the
//           process. On the Zen 4 development machine the step's GEMMs run 1.4-1.65x faster than in
//           fp32 and the training step 1.2-1.4x (examples/BENCHMARKS.md). VDPBF16PS treats bf16
//           subnormal inputs as zero and flushes subnormal results: under 2^-126 per product.
//   emulation  on other CPUs, with MOELAB_BF16_EMULATE=1, or for a shape oneDNN has no fast kernel
//           for: the operands rounded to bf16 but kept in f32 and multiplied by cpu_gemm.h's f32
//           GEMM. The numerics of bf16, not its speed; the oracle of the oneDNN path's tests.
// The operands live in scratch: the step's arena when the Exec has one, else the heap. The
// rounding is the straight-through estimator's: the backward GEMMs use the rounded operands, never
// the derivative of the rounding.
// Threads: both paths thread with the caller's OpenMP like cpu_gemm.h (all of omp_get_max_threads()
// outside a parallel region, one thread inside one); for a given thread count and shape the result
// is the same on every call, so training resumes bit for bit.
// Shapes, contract: as core/ops/matmul.h (y, grad_x OVERWRITTEN, grad_w ACCUMULATED, an undefined
// grad_x skipped). Dtypes: every tensor f32 on the CPU (CUDA's bf16 mode stores bf16 activations
// and calls matmul itself).
#pragma once

#include <cstdint>
#include <string>

#include "core/dtype.h"
#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

// Which implementation runs the GEMMs (see above). Training uses Auto; the tests name the others
// to compare both on one machine.
enum class Bf16Gemm : uint8_t {
  Auto,       // oneDNN where bf16_matmul_onednn_available() and oneDNN has a fast kernel for the shape
              // (unless MOELAB_BF16_EMULATE=1), else the emulation
  OneDnn,     // oneDNN; throws where it is not available or has no fast kernel for the shape
  Emulation,  // the f32 GEMM of the rounded operands
};

void bf16_matmul_forward(const Exec& ex, const Tensor& x, const Tensor& w, const Tensor& y,
                         Bf16Gemm gemm = Bf16Gemm::Auto);
void bf16_matmul_backward(const Exec& ex, const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                          const Tensor& grad_w, Bf16Gemm gemm = Bf16Gemm::Auto);

// Whether oneDNN's bf16 matmul runs on this CPU with bf16 dot-product instructions (whatever
// MOELAB_BF16_EMULATE says).
bool bf16_matmul_onednn_available();
// What Bf16Gemm::Auto runs in this process, for the bench and the logs, e.g.
// "oneDNN bf16 matmul (brg:avx512_core_bf16)" or "emulated (f32 GEMM of bf16-rounded operands: ...why)".
std::string bf16_matmul_path();

namespace ref {
// y[i] = x[i] rounded to the nearest bf16 (ties to even), as f32: bf16_bits_to_float(float_to_bf16_bits(x[i]))
// of core/dtype.h, NaN kept a NaN, infinities kept. y may be x.
void round_to_bf16(const float* x, float* y, int64_t n);
// y[i] = x[i] in bf16 storage: float_to_bf16_bits(x[i]) of core/dtype.h (a NaN stays a quiet NaN).
void convert_to_bf16(const float* x, bf16_t* y, int64_t n);
}  // namespace ref

}  // namespace moelab
