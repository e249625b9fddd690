// RoPE kernel: one thread per (token t, pair i) and batch row b (grid y); it computes cos/sin of
// the angle once, in double like the CPU reference (pos * theta^(-2i/R) in float would be off by
// ~1e-3 rad at position 10^4), then turns pair i of every head of (b, t). Each pair is read and
// then written by that one thread, so the rotation is safe in place.
#include <cuda_bf16.h>

#include <type_traits>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/rope.h"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y; larger B loops

template <typename T>
__global__ void rope_kernel(const T* in, T* out, int64_t B, int64_t T_len, int64_t H, int64_t Dh, int64_t rope_offset,
                            int64_t rope_dim, double theta, int64_t pos_offset, bool inverse) {
  const int64_t pairs = rope_dim / 2;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= T_len * pairs) return;
  const int64_t t = idx / pairs, i = idx % pairs;
  const double angle = static_cast<double>(pos_offset + t) *
                       pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rope_dim));
  double sd, cd;
  sincos(angle, &sd, &cd);
  const float c = static_cast<float>(cd), s = static_cast<float>(inverse ? -sd : sd);  // as the reference casts
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    for (int64_t h = 0; h < H; ++h) {
      const int64_t at = ((b * T_len + t) * H + h) * Dh + rope_offset + 2 * i;
      const float x0 = load(in, at), x1 = load(in, at + 1);  // both read before either is written
      store(out, at, x0 * c - x1 * s);
      store(out, at + 1, x0 * s + x1 * c);
    }
  }
}

}  // namespace

void rope_rotate(const RopeParams& p) {
  const int64_t n = p.B * p.T * p.H * p.Dh;
  if (n == 0) return;
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    // The dims outside the rotated range: copied as they are (the kernel then overwrites the
    // rotated pairs; same stream, so in order). In place they are already there.
    if (p.out != p.in)
      CUDA_CHECK(cudaMemcpyAsync(p.out, p.in, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToDevice, p.stream));
    const dim3 grid(blocks_for(p.T * (p.rope_dim / 2), kThreads), static_cast<unsigned>(p.B < kMaxGridY ? p.B : kMaxGridY));
    rope_kernel<<<grid, kThreads, 0, p.stream>>>(static_cast<const T*>(p.in), static_cast<T*>(p.out), p.B, p.T, p.H,
                                                 p.Dh, p.rope_offset, p.rope_dim, p.theta, p.pos_offset, p.inverse);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace moelab::cuda
