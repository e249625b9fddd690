// Global gradient norm and clipping (MODEL.md, "Training recipe defaults": clip at norm 1.0).
//   grad_norm(grads)      = sqrt( sum over every tensor and element of g^2 ), summed in double
//   clip_grad_norm(grads, max_norm): norm = grad_norm(grads); if norm is finite, every tensor is
//       multiplied by c = min(1, max_norm / (norm + 1e-6)) (torch.nn.utils.clip_grad_norm_'s rule);
//       returns the norm BEFORE clipping.
//   grad_sum_squares(grads) = the norm's square (data parallel with a sharded optimizer: each rank
//       sums its shard, the ranks add their sums, and the root is the global norm)
//   clip_grads_to_norm(grads, norm, max_norm): clip_grad_norm's scaling with a norm computed
//       elsewhere (the global one)
//   scale_grads(grads, factor): every element *= factor (in the tensor's dtype: x *= T(factor))
// A non-finite norm (an inf or NaN gradient) is returned as it is and the gradients are left
// untouched: scaling would only spread the NaN; the trainer's non-finite guard decides (skip the
// step). With data parallelism, call it on the reduced gradients so every rank gets the same norm.
// Shapes: any (each tensor is taken as flat). Contract: clip_grad_norm scales in place.
// The sum is split into fixed-size chunks whose partial sums are added in order, so the result is
// bit-identical for any thread count (a resumed run must replay the same clipping).
// Dtypes: CPU: each tensor f32 or f64 (they may differ). CUDA: every tensor f32.
// Devices: all tensors on the CPU or all on CUDA; a mix throws, naming the first tensor (grads[i])
// on another device than grads[0]. CUDA: each tensor's sum of squares accumulates in double in a
// fixed two-pass order (cuda/grad_norm.h), the per-tensor sums come back to the host and are added
// in list order; bit-identical from run to run, equal to the CPU's sum within double rounding.
// Clipping scales in place on the device (x *= float(c), as on the CPU).
#pragma once

#include <cstdint>
#include <vector>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

double grad_norm(const Exec& ex, const std::vector<Tensor>& grads);
double clip_grad_norm(const Exec& ex, const std::vector<Tensor>& grads, double max_norm);
double grad_sum_squares(const Exec& ex, const std::vector<Tensor>& grads);
void clip_grads_to_norm(const Exec& ex, const std::vector<Tensor>& grads, double norm, double max_norm);
void scale_grads(const Exec& ex, const std::vector<Tensor>& grads, double factor);

namespace ref {
// sum_i x_i^2 in double, in the fixed chunk order described above.
template <typename T>
double grad_sum_squares(const T* x, int64_t n);
template <typename T>
void grad_scale(T* x, int64_t n, T factor);
}  // namespace ref

}  // namespace moelab
