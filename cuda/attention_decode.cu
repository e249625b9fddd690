// Causal attention over a KV cache for generation (core/ops/attention_decode.h). One block per new
// query row (b, t, h); its 4 warps split the visible keys j <= pos + t round-robin (warp w takes
// j = w, w + 4, ...), each keeping an online softmax (running max m, sum l) and an f32 output
// accumulator in shared memory; the 4 partial results are then merged in warp order. A score is
// one warp-wide dot product (lanes stride the head dim, a butterfly sum), so any Dqk, Dv fit and
// the result does not depend on timing: two runs give identical bits.
#include <cuda_bf16.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/attention_decode.h"
#include "cuda/attention_smem.h"
#include "cuda/check.h"
#include "cuda/device_util.cuh"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 128;  // 4 warps per query row: enough keys in flight for a long cache
constexpr int kWarps = kThreads / kWarp;

struct Shape {
  int64_t B, n, S, H, Hkv, Dqk, Dv, pos;
};

// Shared memory (floats): q row [Dqk], per-warp accumulators [kWarps][Dv], per-warp m and l.
size_t smem_floats(const Shape& s) { return static_cast<size_t>(s.Dqk + kWarps * s.Dv + 2 * kWarps); }

template <typename T>
__global__ void __launch_bounds__(kThreads)
    attention_decode_kernel(const T* q, const T* k, const T* v, T* out, Shape s, float scale) {
  extern __shared__ float smem[];
  float* sq = smem;
  float* sacc = sq + s.Dqk;
  float* sm = sacc + kWarps * s.Dv;
  float* sl = sm + kWarps;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t row = blockIdx.x;  // = (b * n + t) * H + h, the row of q and out
  const int64_t h = row % s.H, t = (row / s.H) % s.n, b = row / (s.H * s.n);
  const int64_t g = h / (s.H / s.Hkv), last = s.pos + t;  // KV head; the query's own position (causal limit)
  for (int64_t d = threadIdx.x; d < s.Dqk; d += kThreads) sq[d] = load(q + row * s.Dqk, d);
  float* acc = sacc + warp * s.Dv;
  for (int64_t d = lane; d < s.Dv; d += kWarp) acc[d] = 0.0f;
  __syncthreads();

  float m = -INFINITY, l = 0.0f;
  for (int64_t j = warp; j <= last; j += kWarps) {
    const T* kj = k + ((b * s.S + j) * s.Hkv + g) * s.Dqk;
    const T* vj = v + ((b * s.S + j) * s.Hkv + g) * s.Dv;
    float part = 0.0f;
    for (int64_t d = lane; d < s.Dqk; d += kWarp) part += sq[d] * load(kj, d);
    const float sc = scale * warp_sum(part);
    const float m_new = fmaxf(m, sc);
    const float alpha = expf(m - m_new), p = expf(sc - m_new);  // alpha = 0 on the warp's first key
    l = l * alpha + p;
    m = m_new;
    for (int64_t d = lane; d < s.Dv; d += kWarp) acc[d] = acc[d] * alpha + p * load(vj, d);
  }
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
  __syncthreads();

  // Merge the warps' (m, l, acc) in warp order. Warp 0 always holds key 0, so M is finite; a warp
  // that saw no key (m = -inf, l = 0) gets weight 0.
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w]);
  float weight[kWarps], sum = 0.0f;
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = sm[w] == -INFINITY ? 0.0f : expf(sm[w] - M);
    sum += sl[w] * weight[w];
  }
  T* o = out + row * s.Dv;
  for (int64_t d = threadIdx.x; d < s.Dv; d += kThreads) {
    float x = 0.0f;
    for (int w = 0; w < kWarps; ++w) x += sacc[w * s.Dv + d] * weight[w];
    store(o, d, x / sum);
  }
}

}  // namespace

void attention_decode_forward(const AttentionDecodeParams& p) {
  const Shape s{p.B, p.n, p.S, p.H, p.Hkv, p.Dqk, p.Dv, p.pos};
  if (s.Hkv < 1 || s.H % s.Hkv != 0 || s.pos < 0 || s.pos + s.n > s.S)
    throw std::invalid_argument("attention_decode_forward: bad shape H=" + std::to_string(s.H) + " Hkv=" +
                                std::to_string(s.Hkv) + " pos=" + std::to_string(s.pos) + " n=" + std::to_string(s.n) +
                                " S=" + std::to_string(s.S));
  const int64_t rows = s.B * s.n * s.H;
  if (rows == 0) return;
  const size_t bytes = sizeof(float) * smem_floats(s);
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    ensure_dynamic_smem(attention_decode_kernel<T>, bytes, "attention_decode_forward");
    attention_decode_kernel<T><<<static_cast<unsigned>(rows), kThreads, bytes, p.stream>>>(
        static_cast<const T*>(p.q), static_cast<const T*>(p.k), static_cast<const T*>(p.v), static_cast<T*>(p.out), s,
        p.scale);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace moelab::cuda
