// Rotary position embedding (MODEL.md, "Multi-head latent attention"), INTERLEAVED pairs: dims
// (2i, 2i+1) of the rotated range form pair i, which turns by the angle
//   a(pos, i) = pos * theta^(-2i/R),   i = 0 .. R/2-1
//   y[2i]   = x[2i] cos a - x[2i+1] sin a
//   y[2i+1] = x[2i] sin a + x[2i+1] cos a
// Only dims [rope_offset, rope_offset + R) of every head turn; the others are copied unchanged.
// Token t sits at position pos_offset + t (pos_offset > 0 when decoding after a KV cache).
// MLA turns the Dr tail of each query head (x: [B, T, H, Dn+Dr], rope_offset = Dn, R = Dr) and
// the one shared rope key (x: [B, T, 1, Dr], rope_offset = 0, R = Dr).
// Shapes: x, y: [B, T, H, Dh] with R even, R >= 2, rope_offset + R <= Dh.
// Contract: forward writes y (y may be x itself: in place). backward OVERWRITES grad_x with the
// inverse rotation of grad_y (the rotation is orthogonal); grad_x may be grad_y itself.
// Angles are computed in double and then cast, so float positions in the thousands stay accurate.
// Dtypes: CPU: f32 or f64, the same for both tensors. CUDA: f32 or bf16, the same for both
//         tensors (rotated in f32 with cos/sin from double angles).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void rope_forward(const Exec& ex, const Tensor& x, const Tensor& y, int64_t rope_offset, int64_t rope_dim, double theta,
                  int64_t pos_offset = 0);
void rope_backward(const Exec& ex, const Tensor& grad_y, const Tensor& grad_x, int64_t rope_offset, int64_t rope_dim,
                   double theta, int64_t pos_offset = 0);

namespace ref {
// The [B, T, H, Dh] layout of x and the rotated range of each head.
struct RopeShape {
  int64_t B, T, H, Dh;
  int64_t rope_offset, rope_dim;  // rope_dim = R
};
// inverse = false rotates by +a (forward), inverse = true by -a (backward). `in` may equal `out`.
template <typename T>
void rope_rotate(const T* in, T* out, const RopeShape& s, double theta, int64_t pos_offset, bool inverse);
}  // namespace ref

}  // namespace moelab
