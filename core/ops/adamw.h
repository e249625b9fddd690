// One AdamW step (Loshchilov & Hutter, decoupled weight decay) in torch.optim.AdamW's order, over
// flat tensors (moelab keeps parameters, gradients and optimizer state in flat buffers):
//   p    = p * (1 - lr * weight_decay)          decay first, on the old weights
//   m    = beta1 m + (1 - beta1) g
//   v    = beta2 v + (1 - beta2) g^2
//   m_hat = m / (1 - beta1^t),   v_hat = v / (1 - beta2^t)
//   p    = p - lr * m_hat / (sqrt(v_hat) + eps)
// The bias corrections are computed in double (t can be large) and applied as PyTorch does:
// p -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps), the same formula.
// Shapes: param, grad, m, v: [n] (any shape is taken as flat; all four equal).
// Contract: updates param, m and v in place; grad is read only. m and v start at zero (t = 1).
// param_copy (optional, an OUTPUT): when defined (same numel as param, any shape; f32 or bf16; same
// device), it is OVERWRITTEN with the updated param converted to its dtype (bf16: round to nearest
// even, as Tensor::to does; an f64 param goes through f32 first). This is how the GPU keeps the
// bf16 compute copy of the fp32 master weights in the same pass. It may not overlap grad, m or v.
// Dtypes: CPU: all four f32, or all four f64. CUDA: all four f32 (the scalars are rounded to f32
// exactly as on the CPU, and the kernel evaluates the same expression; results agree with the CPU
// within f32 rounding, not necessarily bit for bit).
// eps = 0 is accepted (the tests use it to see the bare update), but then a zero gradient with zero
// moments gives 0/0 = NaN.
// Errors: step < 1, lr < 0, beta1 or beta2 outside [0, 1), eps < 0, weight_decay < 0, or a
// non-finite hyper-parameter.
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

struct AdamWParams {
  double lr = 1e-3;     // the trainer's schedule sets it every step
  double beta1 = 0.9;
  double beta2 = 0.95;  // DeepSeek-V3's value (PyTorch's default is 0.999)
  double eps = 1e-8;
  double weight_decay = 0.1;
  int64_t step = 1;  // t: 1 for the first update
};

void adamw_step(const Exec& ex, const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                const AdamWParams& hp, const Tensor& param_copy = Tensor());

namespace ref {
template <typename T>
void adamw_step(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWParams& hp);
}  // namespace ref

}  // namespace moelab
