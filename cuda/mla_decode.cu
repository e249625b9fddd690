// MLA's absorbed attention over the latent cache (core/ops/mla_decode.h; MODEL.md "Inference trick
// (absorb)"). One block per new query row (b, t, h):
//   1. qa = W_uk_h^T q_nope (Ckv) into shared memory, thread c summing over d in order;
//   2. its 4 warps split the visible positions j <= pos + t round-robin; a score is one warp-wide
//      dot product qa . ckv_j + q_rope . kr_j, and each warp keeps an online softmax (m, l) and an
//      f32 latent accumulator sum_j p_j ckv_j in shared memory;
//   3. the 4 partial latents are merged in warp order, then out_d = W_uv_h[d] . latent, one warp
//      per output element.
// Every sum runs in a fixed order: two runs give identical bits.
#include <cuda_bf16.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/attention_smem.h"
#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/mla_decode.h"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / kWarp;

struct Shape {
  int64_t B, n, S, H, Dn, Dr, Dv, Ckv, pos;
};

// Shared memory (floats): qa [Ckv] (later the merged latent), q_rope [Dr], per-warp latent
// accumulators [kWarps][Ckv], per-warp m and l.
size_t smem_floats(const Shape& s) { return static_cast<size_t>(s.Ckv + s.Dr + kWarps * s.Ckv + 2 * kWarps); }

template <typename T, typename W>
__global__ void __launch_bounds__(kThreads)
    mla_decode_kernel(const T* q, const W* w_kvb, const T* ckv, const T* kr, T* out, Shape s, float scale) {
  extern __shared__ float smem[];
  const int64_t C = s.Ckv;
  float* sqa = smem;
  float* sqr = sqa + C;
  float* slat = sqr + s.Dr;
  float* sm = slat + kWarps * C;
  float* sl = sm + kWarps;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t row = blockIdx.x;  // = (b * n + t) * H + h, the row of q and out
  const int64_t h = row % s.H, t = (row / s.H) % s.n, b = row / (s.H * s.n);
  const int64_t last = s.pos + t;  // the query's own position: the causal limit
  const T* q_nope = q + row * (s.Dn + s.Dr);
  const T* q_rope = q_nope + s.Dn;
  const W* w_uk = w_kvb + h * (s.Dn + s.Dv) * C;  // [Dn, Ckv]: head h's key rows
  const W* w_uv = w_uk + s.Dn * C;                // [Dv, Ckv]: its value rows

  // 1. The key half of W_kvb folded into the query: qa = W_uk^T q_nope.
  for (int64_t d = threadIdx.x; d < s.Dr; d += kThreads) sqr[d] = load(q_rope, d);
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    float a = 0.0f;
    for (int64_t d = 0; d < s.Dn; ++d) a += load(q_nope, d) * load(w_uk, d * C + c);
    sqa[c] = a;
  }
  float* lat = slat + warp * C;
  for (int64_t c = lane; c < C; c += kWarp) lat[c] = 0.0f;
  __syncthreads();

  // 2. Scores over the cached positions (latent part + rope part), online softmax per warp.
  float m = -INFINITY, l = 0.0f;
  for (int64_t j = warp; j <= last; j += kWarps) {
    const T* cj = ckv + (b * s.S + j) * C;
    const T* rj = kr + (b * s.S + j) * s.Dr;
    float part = 0.0f;
    for (int64_t c = lane; c < C; c += kWarp) part += sqa[c] * load(cj, c);
    for (int64_t d = lane; d < s.Dr; d += kWarp) part += sqr[d] * load(rj, d);
    const float sc = scale * warp_sum(part);
    const float m_new = fmaxf(m, sc);
    const float alpha = expf(m - m_new), p = expf(sc - m_new);  // alpha = 0 on the warp's first key
    l = l * alpha + p;
    m = m_new;
    for (int64_t c = lane; c < C; c += kWarp) lat[c] = lat[c] * alpha + p * load(cj, c);
  }
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
  __syncthreads();  // every warp is done with qa: it is overwritten by the merged latent below

  // 3. Merge the warps in order (warp 0 always holds position 0, so M is finite), then the value
  // half of W_kvb folded into the output: out = W_uv (sum_j p_j ckv_j).
  float M = -INFINITY;
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w]);
  float weight[kWarps], sum = 0.0f;
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = sm[w] == -INFINITY ? 0.0f : expf(sm[w] - M);
    sum += sl[w] * weight[w];
  }
  for (int64_t c = threadIdx.x; c < C; c += kThreads) {
    float x = 0.0f;
    for (int w = 0; w < kWarps; ++w) x += slat[w * C + c] * weight[w];
    sqa[c] = x / sum;
  }
  __syncthreads();
  T* o = out + row * s.Dv;
  for (int64_t d = warp; d < s.Dv; d += kWarps) {
    float part = 0.0f;
    for (int64_t c = lane; c < C; c += kWarp) part += load(w_uv, d * C + c) * sqa[c];
    part = warp_sum(part);
    if (lane == 0) store(o, d, part);
  }
}

}  // namespace

void mla_decode_attention(const MlaDecodeParams& p) {
  const Shape s{p.B, p.n, p.S, p.H, p.Dn, p.Dr, p.Dv, p.Ckv, p.pos};
  if (s.Dn < 0 || s.Dr < 0 || s.Dv < 0 || s.Ckv < 0 || s.pos < 0 || s.pos + s.n > s.S)
    throw std::invalid_argument("mla_decode_attention: bad shape Dn=" + std::to_string(s.Dn) + " Dr=" +
                                std::to_string(s.Dr) + " Dv=" + std::to_string(s.Dv) + " Ckv=" + std::to_string(s.Ckv) +
                                " pos=" + std::to_string(s.pos) + " n=" + std::to_string(s.n) + " S=" + std::to_string(s.S));
  const int64_t rows = s.B * s.n * s.H;
  if (rows == 0) return;
  const size_t bytes = sizeof(float) * smem_floats(s);
  with_act_type(p.bf16, [&](auto* act_tag) {
    using T = std::remove_pointer_t<decltype(act_tag)>;
    with_act_type(p.w_bf16, [&](auto* w_tag) {
      using W = std::remove_pointer_t<decltype(w_tag)>;
      ensure_dynamic_smem(mla_decode_kernel<T, W>, bytes, "mla_decode_attention");
      mla_decode_kernel<T, W><<<static_cast<unsigned>(rows), kThreads, bytes, p.stream>>>(
          static_cast<const T*>(p.q), static_cast<const W*>(p.w_kvb), static_cast<const T*>(p.ckv),
          static_cast<const T*>(p.kr), static_cast<T*>(p.out), s, p.scale);
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace moelab::cuda
