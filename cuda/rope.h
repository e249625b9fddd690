// Launcher for the rotary embedding (core/ops/rope.h has the math and the contract): rotates the
// pairs of dims [rope_offset, rope_offset + rope_dim) of every head by +a (forward) or -a
// (inverse = backward) and copies the other dims. in and out are both f32 or both bf16 as `bf16`
// says; out may be in itself (each pair is read and then written by one thread), but must not
// partly overlap it. The angles are computed in double, as the CPU reference does.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct RopeParams {
  const void* in;  // [B, T, H, Dh]
  void* out;       // [B, T, H, Dh], overwritten; may be in
  int64_t B, T, H, Dh;
  int64_t rope_offset, rope_dim;  // rope_dim = R, even
  double theta;
  int64_t pos_offset;  // token t sits at position pos_offset + t
  bool inverse;
  bool bf16;
  Stream stream;
};

void rope_rotate(const RopeParams& p);

}  // namespace moelab::cuda
