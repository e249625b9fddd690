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
  const void* in = nullptr;               // [B, T, H, Dh]
  void* out = nullptr;                    // [B, T, H, Dh], overwritten; may be in
  int64_t B = 0, T = 0, H = 0, Dh = 0;
  int64_t rope_offset = 0, rope_dim = 0;  // rope_dim = R, even
  double theta = 0.0;
  int64_t pos_offset = 0;                 // token t sits at position pos_offset + t
  bool inverse = false;
  bool bf16 = false;
  Stream stream = nullptr;
};

void rope_rotate(const RopeParams& p);

}  // namespace moelab::cuda
