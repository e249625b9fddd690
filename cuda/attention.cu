// Causal attention kernels (core/ops/attention.h has the math: MODEL.md, "Multi-head latent
// attention"). Two families, both f32 math on f32 or bf16 storage:
//
// Flash (the default): flash-attention style, never a T x T matrix. Every kernel works on a tile
// of kRowTile = 16 "rows" owned by the block's 4 warps (4 rows per warp) against tiles of
// kColTile = 32 "columns", one per lane, staged in shared memory:
//   forward          rows = queries, columns = keys: S = Q K^T (one score per lane), an online
//                    softmax (running max m and sum l per row, the accumulator rescaled by
//                    exp(m_old - m_new)), then O += P V with P broadcast from its lane by shuffles.
//   backward grad_q  rows = queries, columns = keys: P = exp(S - lse), dP = dO V^T,
//                    dS = P (dP - D), grad_q += dS K.
//   backward grad_kv rows = keys, columns = queries of each head of the KV group in turn:
//                    grad_v += P^T dO, grad_k += dS^T Q.
// D_t = grad_out_t . out_t is recomputed where needed (one Dv dot per query row and tile) instead of
// being stored. Every output element has exactly one writer that adds in a fixed order (heads,
// then query tiles, then queries within a tile): two runs give identical bits, with no atomics.
// A lane keeps its row's output / gradient columns d = lane + 32 c (c < 8) in registers, hence the
// head-dim limit of 256 (kAttentionMaxHeadDim).
// Tensor cores: the two products per tile (the Q.K dot per lane, and the shuffle loop that adds
// P V / dS K / P^T dO / dS^T Q) are where wmma / mma.sync (or wgmma on sm_90a) would slot in, with
// bf16 tiles in shared memory and f32 fragments; the tiling and the online softmax stay as they are.
//
// Reference: one thread per query row (forward, grad_q) or key row (grad_k, grad_v) with plain
// loops over the other positions, keeping a 256-float accumulator in local memory. Slow and obvious:
// the GPU twin of the CPU reference, selected by AttentionImpl::Naive.
#include <cuda_bf16.h>

#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/attention.h"
#include "cuda/attention_smem.h"
#include "cuda/check.h"
#include "cuda/device_util.cuh"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 128;                          // 4 warps per block
constexpr int kWarps = kThreads / kWarp;
constexpr int kRowsPerWarp = 4;
constexpr int kRowTile = kWarps * kRowsPerWarp;        // 16 rows per block
constexpr int kColTile = kWarp;                        // 32 columns per tile: one per lane
constexpr int kMaxCols = static_cast<int>(kAttentionMaxHeadDim) / kWarp;  // 8 registers per lane per row
constexpr unsigned kFull = 0xffffffffu;

struct Dims {
  int64_t B, T, H, Hkv;
  int Dqk, Dv;
};

// Row stride of a shared tile that lanes read down a column (lane i reads row i): an odd stride
// puts the 32 rows' elements in 32 different banks.
__host__ __device__ constexpr int odd_stride(int d) { return d | 1; }

// Shared-memory layouts (offsets in floats), computed the same way on the host (size) and the device.
struct ForwardSmem {  // Q [kRowTile][Dqk], K [kColTile][odd(Dqk)], V [kColTile][Dv]
  int q, k, v, total;
  __host__ __device__ ForwardSmem(int Dqk, int Dv)
      : q(0), k(kRowTile * Dqk), v(k + kColTile * odd_stride(Dqk)), total(v + kColTile * Dv) {}
};
struct GradQSmem {  // Q [kRowTile][Dqk], dO [kRowTile][Dv], K [kColTile][odd(Dqk)], V [kColTile][odd(Dv)]
  int q, go, k, v, total;
  __host__ __device__ GradQSmem(int Dqk, int Dv)
      : q(0), go(kRowTile * Dqk), k(go + kRowTile * Dv), v(k + kColTile * odd_stride(Dqk)),
        total(v + kColTile * odd_stride(Dv)) {}
};
struct GradKvSmem {  // K [kRowTile][Dqk], V [kRowTile][Dv], Q [kColTile][odd(Dqk)], dO [kColTile][odd(Dv)], lse, D
  int k, v, q, go, lse, D, total;
  __host__ __device__ GradKvSmem(int Dqk, int Dv)
      : k(0), v(kRowTile * Dqk), q(v + kRowTile * Dv), go(q + kColTile * odd_stride(Dqk)),
        lse(go + kColTile * odd_stride(Dv)), D(lse + kColTile), total(D + kColTile) {}
};

// Offsets of one row of a [B, T, heads, dim] tensor and of one lse entry [B, H, T].
__device__ __forceinline__ int64_t row_at(int64_t b, int64_t t, int64_t head, int64_t T, int64_t heads, int64_t dim) {
  return ((b * T + t) * heads + head) * dim;
}
__device__ __forceinline__ int64_t lse_at(const Dims& s, int64_t b, int64_t h, int64_t t) { return (b * s.H + h) * s.T + t; }

// dst[r * ld + d] = src row (b, row0 + r, head) of a [B, T, heads, D] tensor, as f32, for r < rows;
// rows at or past T are zero (so that masked lanes multiply finite values). All threads take part.
template <typename T>
__device__ void load_tile(float* dst, int ld, const T* src, int64_t b, int64_t row0, int rows, int64_t Tlen,
                          int64_t heads, int64_t head, int D) {
  for (int i = threadIdx.x; i < rows * D; i += blockDim.x) {
    const int r = i / D, d = i - r * D;
    const int64_t t = row0 + r;
    dst[r * ld + d] = t < Tlen ? load(src, row_at(b, t, head, Tlen, heads, D) + d) : 0.0f;
  }
}

__device__ __forceinline__ float dot_smem(const float* a, const float* b, int n) {
  float acc = 0.0f;
  for (int d = 0; d < n; ++d) acc += a[d] * b[d];
  return acc;
}

// ---------------------------------------------------------------------------------------------
// Flash forward. Block (query tile, head h, batch b); warp w owns query rows 4w .. 4w+3 of the tile.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    flash_forward_kernel(const T* q, const T* k, const T* v, T* out, float* lse, Dims s, float scale) {
  extern __shared__ float smem[];
  const ForwardSmem L(s.Dqk, s.Dv);
  float* sq = smem + L.q;
  float* sk = smem + L.k;
  float* sv = smem + L.v;
  const int ldk = odd_stride(s.Dqk);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t b = blockIdx.z, h = blockIdx.y, t0 = static_cast<int64_t>(blockIdx.x) * kRowTile;
  const int64_t g = h / (s.H / s.Hkv);  // the KV head of query head h
  load_tile(sq, s.Dqk, q, b, t0, kRowTile, s.T, s.H, h, s.Dqk);

  float m[kRowsPerWarp], l[kRowsPerWarp], acc[kRowsPerWarp][kMaxCols];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int c = 0; c < kMaxCols; ++c) acc[r][c] = 0.0f;
  }

  const int64_t t_end = s.T < t0 + kRowTile ? s.T : t0 + kRowTile;  // causal: no key past the last query
  for (int64_t j0 = 0; j0 < t_end; j0 += kColTile) {
    __syncthreads();  // every warp is done with the previous K/V tile (and the Q tile is loaded)
    load_tile(sk, ldk, k, b, j0, kColTile, s.T, s.Hkv, g, s.Dqk);
    load_tile(sv, s.Dv, v, b, j0, kColTile, s.T, s.Hkv, g, s.Dv);
    __syncthreads();
    const int64_t j = j0 + lane;  // the key this lane scores
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int64_t t = t0 + row;
      if (t >= s.T || j0 > t) continue;  // warp-uniform: this row sees no key of this tile
      // s_j = scale * q_t . k_j (tensor cores: S = Q K^T for the whole tile would go here).
      const bool visible = j <= t;
      const float sc = visible ? scale * dot_smem(sq + row * s.Dqk, sk + lane * ldk, s.Dqk) : -INFINITY;
      // Online softmax: key j0 <= t is visible, so m_new is finite; on the first tile m = -inf and
      // alpha = exp(-inf) = 0 (nothing to rescale yet).
      const float m_new = fmaxf(m[r], warp_max(sc));
      const float p = visible ? expf(sc - m_new) : 0.0f;
      const float alpha = expf(m[r] - m_new);
      l[r] = l[r] * alpha + warp_sum(p);
      m[r] = m_new;
#pragma unroll
      for (int c = 0; c < kMaxCols; ++c) acc[r][c] *= alpha;
      // O += P V: key jj's probability comes from lane jj (tensor cores: P V as an mma here).
      const int nkeys = static_cast<int>(t - j0 + 1 < kColTile ? t - j0 + 1 : kColTile);
      for (int jj = 0; jj < nkeys; ++jj) {
        const float pj = __shfl_sync(kFull, p, jj);
        const float* vr = sv + jj * s.Dv;
#pragma unroll
        for (int c = 0; c < kMaxCols; ++c) {
          const int d = lane + c * kWarp;
          if (d < s.Dv) acc[r][c] += pj * vr[d];
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t t = t0 + warp * kRowsPerWarp + r;
    if (t >= s.T) continue;
    const float inv = 1.0f / l[r];
    T* o = out + row_at(b, t, h, s.T, s.H, s.Dv);
#pragma unroll
    for (int c = 0; c < kMaxCols; ++c) {
      const int d = lane + c * kWarp;
      if (d < s.Dv) store(o, d, acc[r][c] * inv);
    }
    if (lane == 0) lse[lse_at(s, b, h, t)] = m[r] + logf(l[r]);
  }
}

// ---------------------------------------------------------------------------------------------
// Flash backward, grad_q. Block (query tile, head h, batch b); warp w owns query rows 4w .. 4w+3.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    flash_grad_q_kernel(const T* grad_out, const T* q, const T* k, const T* v, const T* out, const float* lse,
                        T* grad_q, Dims s, float scale) {
  extern __shared__ float smem[];
  const GradQSmem L(s.Dqk, s.Dv);
  float* sq = smem + L.q;
  float* sgo = smem + L.go;
  float* sk = smem + L.k;
  float* sv = smem + L.v;
  const int ldk = odd_stride(s.Dqk), ldv = odd_stride(s.Dv);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t b = blockIdx.z, h = blockIdx.y, t0 = static_cast<int64_t>(blockIdx.x) * kRowTile;
  const int64_t g = h / (s.H / s.Hkv);
  load_tile(sq, s.Dqk, q, b, t0, kRowTile, s.T, s.H, h, s.Dqk);
  load_tile(sgo, s.Dv, grad_out, b, t0, kRowTile, s.T, s.H, h, s.Dv);
  __syncthreads();

  // Per owned row: its lse and D_t = grad_out_t . out_t (softmax's Jacobian term), recomputed here.
  float row_lse[kRowsPerWarp], row_D[kRowsPerWarp], acc[kRowsPerWarp][kMaxCols];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp * kRowsPerWarp + r;
    const int64_t t = t0 + row;
    float D = 0.0f;
    if (t < s.T) {
      const T* o = out + row_at(b, t, h, s.T, s.H, s.Dv);
      for (int d = lane; d < s.Dv; d += kWarp) D += sgo[row * s.Dv + d] * load(o, d);
    }
    row_D[r] = warp_sum(D);
    row_lse[r] = t < s.T ? lse[lse_at(s, b, h, t)] : 0.0f;
#pragma unroll
    for (int c = 0; c < kMaxCols; ++c) acc[r][c] = 0.0f;
  }

  const int64_t t_end = s.T < t0 + kRowTile ? s.T : t0 + kRowTile;
  for (int64_t j0 = 0; j0 < t_end; j0 += kColTile) {
    __syncthreads();
    load_tile(sk, ldk, k, b, j0, kColTile, s.T, s.Hkv, g, s.Dqk);
    load_tile(sv, ldv, v, b, j0, kColTile, s.T, s.Hkv, g, s.Dv);
    __syncthreads();
    const int64_t j = j0 + lane;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int64_t t = t0 + row;
      if (t >= s.T || j0 > t) continue;  // warp-uniform
      const bool visible = j <= t;
      const float p = visible ? expf(scale * dot_smem(sq + row * s.Dqk, sk + lane * ldk, s.Dqk) - row_lse[r]) : 0.0f;
      const float dp = dot_smem(sgo + row * s.Dv, sv + lane * ldv, s.Dv);  // grad_out_t . v_j
      const float ds = p * (dp - row_D[r]);
      // grad_q_t += ds_j k_j over the tile's keys (tensor cores: dS K as an mma here).
      const int nkeys = static_cast<int>(t - j0 + 1 < kColTile ? t - j0 + 1 : kColTile);
      for (int jj = 0; jj < nkeys; ++jj) {
        const float dsj = __shfl_sync(kFull, ds, jj);
        const float* kr = sk + jj * ldk;
#pragma unroll
        for (int c = 0; c < kMaxCols; ++c) {
          const int d = lane + c * kWarp;
          if (d < s.Dqk) acc[r][c] += dsj * kr[d];
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t t = t0 + warp * kRowsPerWarp + r;
    if (t >= s.T) continue;
    T* gq = grad_q + row_at(b, t, h, s.T, s.H, s.Dqk);
#pragma unroll
    for (int c = 0; c < kMaxCols; ++c) {
      const int d = lane + c * kWarp;
      if (d < s.Dqk) store(gq, d, scale * acc[r][c]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Flash backward, grad_k and grad_v. Block (key tile, KV head g, batch b); warp w owns key rows
// 4w .. 4w+3 of the tile and walks, in this order, the query heads h of group g and the query
// tiles that can see its keys (t >= j); lane i scores query t0 + i of the current tile.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    flash_grad_kv_kernel(const T* grad_out, const T* q, const T* k, const T* v, const T* out, const float* lse,
                         T* grad_k, T* grad_v, Dims s, float scale) {
  extern __shared__ float smem[];
  const GradKvSmem L(s.Dqk, s.Dv);
  float* sk = smem + L.k;
  float* sv = smem + L.v;
  float* sq = smem + L.q;
  float* sgo = smem + L.go;
  float* slse = smem + L.lse;
  float* sD = smem + L.D;
  const int ldq = odd_stride(s.Dqk), ldgo = odd_stride(s.Dv);
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t b = blockIdx.z, g = blockIdx.y, j0 = static_cast<int64_t>(blockIdx.x) * kRowTile;
  const int64_t group = s.H / s.Hkv;
  load_tile(sk, s.Dqk, k, b, j0, kRowTile, s.T, s.Hkv, g, s.Dqk);
  load_tile(sv, s.Dv, v, b, j0, kRowTile, s.T, s.Hkv, g, s.Dv);

  float acck[kRowsPerWarp][kMaxCols], accv[kRowsPerWarp][kMaxCols];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int c = 0; c < kMaxCols; ++c) acck[r][c] = accv[r][c] = 0.0f;

  const int64_t t_first = (j0 / kColTile) * kColTile;  // the first query tile that holds a t >= j0
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    for (int64_t t0 = t_first; t0 < s.T; t0 += kColTile) {
      __syncthreads();  // the previous Q/dO tile is consumed (and the K/V tile is loaded)
      load_tile(sq, ldq, q, b, t0, kColTile, s.T, s.H, h, s.Dqk);
      load_tile(sgo, ldgo, grad_out, b, t0, kColTile, s.T, s.H, h, s.Dv);
      __syncthreads();
      // lse and D = grad_out_t . out_t of the tile's 32 queries; warp w does queries w, w + 4, ...
      for (int c = warp; c < kColTile; c += kWarps) {
        const int64_t t = t0 + c;
        float D = 0.0f;
        if (t < s.T) {
          const T* o = out + row_at(b, t, h, s.T, s.H, s.Dv);
          for (int d = lane; d < s.Dv; d += kWarp) D += sgo[c * ldgo + d] * load(o, d);
        }
        D = warp_sum(D);
        if (lane == 0) {
          sD[c] = D;
          slse[c] = t < s.T ? lse[lse_at(s, b, h, t)] : 0.0f;
        }
      }
      __syncthreads();
      const int64_t t = t0 + lane;  // the query this lane scores
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        const int row = warp * kRowsPerWarp + r;
        const int64_t j = j0 + row;
        if (j >= s.T || t0 + kColTile - 1 < j) continue;  // warp-uniform: no query of this tile sees key j
        const bool visible = t >= j && t < s.T;
        const float p = visible ? expf(scale * dot_smem(sk + row * s.Dqk, sq + lane * ldq, s.Dqk) - slse[lane]) : 0.0f;
        const float dp = dot_smem(sv + row * s.Dv, sgo + lane * ldgo, s.Dv);  // grad_out_t . v_j
        const float ds = p * (dp - sD[lane]);
        // grad_v_j += p_t grad_out_t, grad_k_j += ds_t q_t over the tile's queries t >= j, in order
        // (tensor cores: P^T dO and dS^T Q as mmas here).
        const int tt_begin = static_cast<int>(j > t0 ? j - t0 : 0);
        const int tt_end = static_cast<int>(s.T - t0 < kColTile ? s.T - t0 : kColTile);
        for (int tt = tt_begin; tt < tt_end; ++tt) {
          const float pt = __shfl_sync(kFull, p, tt);
          const float dst = __shfl_sync(kFull, ds, tt);
          const float* qr = sq + tt * ldq;
          const float* gr = sgo + tt * ldgo;
#pragma unroll
          for (int c = 0; c < kMaxCols; ++c) {
            const int d = lane + c * kWarp;
            if (d < s.Dqk) acck[r][c] += dst * qr[d];
            if (d < s.Dv) accv[r][c] += pt * gr[d];
          }
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t j = j0 + warp * kRowsPerWarp + r;
    if (j >= s.T) continue;
    T* gk = grad_k + row_at(b, j, g, s.T, s.Hkv, s.Dqk);
    T* gv = grad_v + row_at(b, j, g, s.T, s.Hkv, s.Dv);
#pragma unroll
    for (int c = 0; c < kMaxCols; ++c) {
      const int d = lane + c * kWarp;
      if (d < s.Dqk) store(gk, d, scale * acck[r][c]);
      if (d < s.Dv) store(gv, d, accv[r][c]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Reference kernels: one thread per row, plain loops, f32 accumulators in local memory.
template <typename T>
__device__ float dot_global(const T* a, const T* b, int n) {
  float acc = 0.0f;
  for (int d = 0; d < n; ++d) acc += load(a, d) * load(b, d);
  return acc;
}

// Thread (b, h, t): pass 1 finds the max score, pass 2 adds exp(s_j - max) and exp(s_j - max) v_j.
template <typename T>
__global__ void reference_forward_kernel(const T* q, const T* k, const T* v, T* out, float* lse, Dims s, float scale) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= s.B * s.H * s.T) return;
  const int64_t t = idx % s.T, h = (idx / s.T) % s.H, b = idx / (s.T * s.H);
  const int64_t g = h / (s.H / s.Hkv);
  const T* qt = q + row_at(b, t, h, s.T, s.H, s.Dqk);
  float m = -INFINITY;
  for (int64_t j = 0; j <= t; ++j) m = fmaxf(m, scale * dot_global(qt, k + row_at(b, j, g, s.T, s.Hkv, s.Dqk), s.Dqk));
  float acc[kAttentionMaxHeadDim];
  for (int d = 0; d < s.Dv; ++d) acc[d] = 0.0f;
  float sum = 0.0f;
  for (int64_t j = 0; j <= t; ++j) {
    const float p = expf(scale * dot_global(qt, k + row_at(b, j, g, s.T, s.Hkv, s.Dqk), s.Dqk) - m);
    sum += p;
    const T* vj = v + row_at(b, j, g, s.T, s.Hkv, s.Dv);
    for (int d = 0; d < s.Dv; ++d) acc[d] += p * load(vj, d);
  }
  T* o = out + row_at(b, t, h, s.T, s.H, s.Dv);
  for (int d = 0; d < s.Dv; ++d) store(o, d, acc[d] / sum);
  lse[lse_at(s, b, h, t)] = m + logf(sum);
}

// Thread (b, h, t): grad_q_t = scale sum_{j<=t} p_j (grad_out_t . v_j - D_t) k_j.
template <typename T>
__global__ void reference_grad_q_kernel(const T* grad_out, const T* q, const T* k, const T* v, const T* out,
                                        const float* lse, T* grad_q, Dims s, float scale) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= s.B * s.H * s.T) return;
  const int64_t t = idx % s.T, h = (idx / s.T) % s.H, b = idx / (s.T * s.H);
  const int64_t g = h / (s.H / s.Hkv);
  const T* qt = q + row_at(b, t, h, s.T, s.H, s.Dqk);
  const T* go = grad_out + row_at(b, t, h, s.T, s.H, s.Dv);
  const float D = dot_global(go, out + row_at(b, t, h, s.T, s.H, s.Dv), s.Dv);
  const float row_lse = lse[lse_at(s, b, h, t)];
  float acc[kAttentionMaxHeadDim];
  for (int d = 0; d < s.Dqk; ++d) acc[d] = 0.0f;
  for (int64_t j = 0; j <= t; ++j) {
    const T* kj = k + row_at(b, j, g, s.T, s.Hkv, s.Dqk);
    const float p = expf(scale * dot_global(qt, kj, s.Dqk) - row_lse);
    const float ds = p * (dot_global(go, v + row_at(b, j, g, s.T, s.Hkv, s.Dv), s.Dv) - D);
    for (int d = 0; d < s.Dqk; ++d) acc[d] += ds * load(kj, d);
  }
  T* gq = grad_q + row_at(b, t, h, s.T, s.H, s.Dqk);
  for (int d = 0; d < s.Dqk; ++d) store(gq, d, scale * acc[d]);
}

// Thread (b, g, j): grad_k_j and grad_v_j summed over the heads h of group g, then t = j .. T-1.
template <typename T>
__global__ void reference_grad_kv_kernel(const T* grad_out, const T* q, const T* k, const T* v, const T* out,
                                         const float* lse, T* grad_k, T* grad_v, Dims s, float scale) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= s.B * s.Hkv * s.T) return;
  const int64_t j = idx % s.T, g = (idx / s.T) % s.Hkv, b = idx / (s.T * s.Hkv);
  const int64_t group = s.H / s.Hkv;
  const T* kj = k + row_at(b, j, g, s.T, s.Hkv, s.Dqk);
  const T* vj = v + row_at(b, j, g, s.T, s.Hkv, s.Dv);
  float acck[kAttentionMaxHeadDim], accv[kAttentionMaxHeadDim];
  for (int d = 0; d < s.Dqk; ++d) acck[d] = 0.0f;
  for (int d = 0; d < s.Dv; ++d) accv[d] = 0.0f;
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    for (int64_t t = j; t < s.T; ++t) {
      const T* qt = q + row_at(b, t, h, s.T, s.H, s.Dqk);
      const T* go = grad_out + row_at(b, t, h, s.T, s.H, s.Dv);
      const float D = dot_global(go, out + row_at(b, t, h, s.T, s.H, s.Dv), s.Dv);
      const float p = expf(scale * dot_global(qt, kj, s.Dqk) - lse[lse_at(s, b, h, t)]);
      const float ds = p * (dot_global(go, vj, s.Dv) - D);
      for (int d = 0; d < s.Dqk; ++d) acck[d] += ds * load(qt, d);
      for (int d = 0; d < s.Dv; ++d) accv[d] += p * load(go, d);
    }
  }
  T* gk = grad_k + row_at(b, j, g, s.T, s.Hkv, s.Dqk);
  T* gv = grad_v + row_at(b, j, g, s.T, s.Hkv, s.Dv);
  for (int d = 0; d < s.Dqk; ++d) store(gk, d, scale * acck[d]);
  for (int d = 0; d < s.Dv; ++d) store(gv, d, accv[d]);
}

// ---------------------------------------------------------------------------------------------
Dims checked_dims(const char* op, int64_t B, int64_t T, int64_t H, int64_t Hkv, int64_t Dqk, int64_t Dv) {
  auto fail = [&](const std::string& why) { throw std::invalid_argument(std::string(op) + ": " + why); };
  if (B < 0 || T < 0 || H < 0 || Dqk < 0 || Dv < 0 || Hkv < 1 || H % Hkv != 0)
    fail("bad shape B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
         " Hkv=" + std::to_string(Hkv) + " (H must be a multiple of Hkv)");
  if (Dqk > kAttentionMaxHeadDim || Dv > kAttentionMaxHeadDim)
    fail("head dims Dqk=" + std::to_string(Dqk) + ", Dv=" + std::to_string(Dv) + " exceed the CUDA kernels' limit of " +
         std::to_string(kAttentionMaxHeadDim));
  if (B > 65535 || H > 65535) fail("B=" + std::to_string(B) + " and H=" + std::to_string(H) + " must be <= 65535 (grid)");
  return {B, T, H, Hkv, static_cast<int>(Dqk), static_cast<int>(Dv)};
}

template <typename T>
void launch_forward(const AttentionForwardParams& p, const Dims& s) {
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  T* out = static_cast<T*>(p.out);
  if (p.kernel == AttentionKernel::Reference) {
    reference_forward_kernel<T><<<blocks_for(s.B * s.H * s.T, kThreads), kThreads, 0, p.stream>>>(q, k, v, out, p.lse, s,
                                                                                                   p.scale);
  } else {
    const size_t bytes = sizeof(float) * ForwardSmem(s.Dqk, s.Dv).total;
    ensure_dynamic_smem(flash_forward_kernel<T>, bytes, "attention_forward (flash)");
    const dim3 grid(blocks_for(s.T, kRowTile), static_cast<unsigned>(s.H), static_cast<unsigned>(s.B));
    flash_forward_kernel<T><<<grid, kThreads, bytes, p.stream>>>(q, k, v, out, p.lse, s, p.scale);
  }
  CUDA_CHECK_LAUNCH();
}

template <typename T>
void launch_backward(const AttentionBackwardParams& p, const Dims& s) {
  const T* go = static_cast<const T*>(p.grad_out);
  const T* q = static_cast<const T*>(p.q);
  const T* k = static_cast<const T*>(p.k);
  const T* v = static_cast<const T*>(p.v);
  const T* out = static_cast<const T*>(p.out);
  T* gq = static_cast<T*>(p.grad_q);
  T* gk = static_cast<T*>(p.grad_k);
  T* gv = static_cast<T*>(p.grad_v);
  if (p.kernel == AttentionKernel::Reference) {
    if (s.H > 0) {
      reference_grad_q_kernel<T><<<blocks_for(s.B * s.H * s.T, kThreads), kThreads, 0, p.stream>>>(go, q, k, v, out, p.lse,
                                                                                                   gq, s, p.scale);
      CUDA_CHECK_LAUNCH();
    }
    reference_grad_kv_kernel<T><<<blocks_for(s.B * s.Hkv * s.T, kThreads), kThreads, 0, p.stream>>>(
        go, q, k, v, out, p.lse, gk, gv, s, p.scale);
    CUDA_CHECK_LAUNCH();
    return;
  }
  if (s.H > 0) {
    const size_t bytes = sizeof(float) * GradQSmem(s.Dqk, s.Dv).total;
    ensure_dynamic_smem(flash_grad_q_kernel<T>, bytes, "attention_backward (flash, grad_q)");
    const dim3 grid(blocks_for(s.T, kRowTile), static_cast<unsigned>(s.H), static_cast<unsigned>(s.B));
    flash_grad_q_kernel<T><<<grid, kThreads, bytes, p.stream>>>(go, q, k, v, out, p.lse, gq, s, p.scale);
    CUDA_CHECK_LAUNCH();
  }
  const size_t bytes = sizeof(float) * GradKvSmem(s.Dqk, s.Dv).total;
  ensure_dynamic_smem(flash_grad_kv_kernel<T>, bytes, "attention_backward (flash, grad_k/grad_v)");
  const dim3 grid(blocks_for(s.T, kRowTile), static_cast<unsigned>(s.Hkv), static_cast<unsigned>(s.B));
  flash_grad_kv_kernel<T><<<grid, kThreads, bytes, p.stream>>>(go, q, k, v, out, p.lse, gk, gv, s, p.scale);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void attention_forward(const AttentionForwardParams& p) {
  const Dims s = checked_dims("attention_forward", p.B, p.T, p.H, p.Hkv, p.Dqk, p.Dv);
  if (s.B == 0 || s.T == 0 || s.H == 0) return;
  with_act_type(p.bf16, [&](auto* tag) { launch_forward<std::remove_pointer_t<decltype(tag)>>(p, s); });
}

void attention_backward(const AttentionBackwardParams& p) {
  const Dims s = checked_dims("attention_backward", p.B, p.T, p.H, p.Hkv, p.Dqk, p.Dv);
  if (s.B == 0 || s.T == 0) return;
  with_act_type(p.bf16, [&](auto* tag) { launch_backward<std::remove_pointer_t<decltype(tag)>>(p, s); });
}

}  // namespace moelab::cuda
