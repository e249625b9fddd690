// MoE dispatch/combine kernels (MODEL.md, "DeepSeekMoE": y = sum_k g_k FFN_{e_k}(u)).
// Layout: one block; a shared-memory histogram (integer atomics: the counts do not depend on their
// order), an exclusive scan by one thread, then one warp hands out rows 32 assignments at a time in
// assignment order (__match_any_sync groups the lanes of one expert), from tiles of the indices the
// whole block stages in shared memory, so pos is the CPU's stable counting sort exactly. Dispatch / combine: one warp per token (per assignment for combine
// backward); sums over k run in k order in f32, one writer per output element: deterministic.
#include <cuda_bf16.h>
#include <math_constants.h>

#include <type_traits>

#include "cuda/check.h"
#include "cuda/runtime.h"
#include "cuda/device_util.cuh"
#include "cuda/moe_dispatch.h"

namespace moelab::cuda {

namespace {

constexpr int kLayoutThreads = 512;  // the histogram pass and the tile loads; the placement is one warp
constexpr int kLayoutTile = 2048;    // assignments staged in shared memory per placement round (8 KiB)
constexpr int kRowsPerBlock = 8;     // 8 warps = 256 threads per block for the row kernels

__global__ void layout_kernel(const int32_t* idx, int64_t numel, int E, int min_index, int32_t* pos, int32_t* order,
                              int32_t* counts, int32_t* offsets, double* counts_f64) {
  extern __shared__ int32_t next[];  // [E + 1]: the counts, then each expert's next free row
  __shared__ int32_t tile[kLayoutTile];  // the experts of the assignments being placed (-1: none)
  for (int e = threadIdx.x; e <= E; e += blockDim.x) next[e] = 0;
  __syncthreads();
  for (int64_t i = threadIdx.x; i < numel; i += blockDim.x) {
    const int32_t v = idx[i];
    if (v < min_index || v >= E) atomicAdd(&next[E], 1);  // out of range: counted, never placed
    else if (v >= 0) atomicAdd(&next[v], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= E; e += blockDim.x) counts[e] = next[e];
  if (counts_f64) {  // every count NaN when an entry was out of range: the caller's check is on the host
    const bool bad = next[E] != 0;
    for (int e = threadIdx.x; e < E; e += blockDim.x) counts_f64[e] = bad ? CUDART_NAN : static_cast<double>(next[e]);
  }
  __syncthreads();  // every count is read before thread 0 turns them into first rows
  if (threadIdx.x == 0) {
    int32_t run = 0;
    for (int e = 0; e < E; ++e) {
      const int32_t c = next[e];
      next[e] = run;
      if (offsets) offsets[e] = run;
      run += c;
    }
    if (offsets) offsets[E] = run;
  }
  __syncthreads();
  if (pos == nullptr && order == nullptr) return;  // the whole block leaves: counts only
  // Placement, a tile at a time: the block stages the tile's experts in shared memory (so the one
  // placing warp does not wait on global loads), then warp 0 walks it 32 assignments a step.
  const unsigned lane = threadIdx.x % kWarp;
  for (int64_t tile_base = 0; tile_base < numel; tile_base += kLayoutTile) {
    const int tile_n = numel - tile_base < kLayoutTile ? static_cast<int>(numel - tile_base) : kLayoutTile;
    for (int t = threadIdx.x; t < kLayoutTile; t += blockDim.x) {
      const int32_t v = t < tile_n ? idx[tile_base + t] : -1;
      tile[t] = v >= 0 && v < E ? v : -1;  // -1: not sent, out of range, or past the end
    }
    __syncthreads();
    if (threadIdx.x < kWarp) {
      for (int base = 0; base < tile_n; base += kWarp) {
        const int key = tile[base + lane];
        const unsigned same = __match_any_sync(0xffffffffu, key);  // the lanes with this lane's expert
        int32_t row = -1;
        if (key >= 0) row = next[key] + __popc(same & ((1u << lane) - 1u));  // lower lanes come first
        __syncwarp();  // every lane has read next[] before the leaders advance it
        if (key >= 0 && static_cast<int>(lane) == __ffs(same) - 1) next[key] += __popc(same);
        __syncwarp();
        const int64_t i = tile_base + base + lane;
        if (base + static_cast<int>(lane) < tile_n) {  // the tile's last step may be partial
          if (pos) pos[i] = row;
          if (order && row >= 0) order[row] = static_cast<int32_t>(i);
        }
      }
    }
    __syncthreads();  // the tile is placed before the block overwrites it
  }
}

// An entry past the expert rows (not what moe_dispatch_layout makes); negative entries are "not
// sent", as on the CPU.
__device__ __forceinline__ bool bad_pos(int32_t p, int64_t M) { return p >= M; }

template <typename T>
__global__ void dispatch_forward_kernel(const T* x, const int32_t* pos, T* expert_x, int64_t N, int64_t K, int64_t D,
                                        int64_t M) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (n >= N) return;
  const T* xn = x + n * D;
  for (int64_t k = 0; k < K; ++k) {
    const int32_t p = pos[n * K + k];
    if (p < 0 || p >= M) continue;  // not sent (or invalid: never written out of bounds)
    T* row = expert_x + p * D;
    for (int64_t d = threadIdx.x; d < D; d += kWarp) row[d] = xn[d];  // a copy: exact in bf16 too
  }
}

template <typename T>
__global__ void dispatch_backward_kernel(const T* grad_expert_x, const int32_t* pos, T* grad_x, int64_t N, int64_t K,
                                         int64_t D, int64_t M) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (n >= N) return;
  const int32_t* pn = pos + n * K;
  bool bad = false;
  for (int64_t k = 0; k < K; ++k) bad = bad || bad_pos(pn[k], M);
  T* gx = grad_x + n * D;
  for (int64_t d = threadIdx.x; d < D; d += kWarp) {
    float acc = 0.0f;
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t p = pn[k]; p >= 0 && p < M) acc += load(grad_expert_x, p * D + d);
    store(gx, d, bad ? NAN : acc);
  }
}

template <typename T>
__global__ void combine_forward_kernel(const T* expert_y, const int32_t* pos, const float* topk_weights, T* y,
                                       int64_t N, int64_t K, int64_t D, int64_t M) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (n >= N) return;
  const int32_t* pn = pos + n * K;
  const float* wn = topk_weights + n * K;
  bool bad = false;
  for (int64_t k = 0; k < K; ++k) bad = bad || bad_pos(pn[k], M);
  T* yn = y + n * D;
  for (int64_t d = threadIdx.x; d < D; d += kWarp) {
    float acc = 0.0f;
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t p = pn[k]; p >= 0 && p < M)
        acc = __fadd_rn(acc, __fmul_rn(wn[k], load(expert_y, p * D + d)));  // separate multiply and add (no FMA contraction)
    store(yn, d, bad ? NAN : acc);
  }
}

// One warp per assignment i = n * K + k.
template <typename T>
__global__ void combine_backward_kernel(const T* grad_y, const T* expert_y, const int32_t* pos,
                                        const float* topk_weights, T* grad_expert_y, float* grad_topk_weights,
                                        int64_t N, int64_t K, int64_t D, int64_t M) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (i >= N * K) return;
  const int32_t p = pos[i];
  if (p < 0 || p >= M) {  // dropped: its gate does not reach y; invalid: NaN
    if (threadIdx.x == 0) grad_topk_weights[i] = p < 0 ? 0.0f : NAN;
    return;
  }
  const int64_t n = i / K;
  const float w = topk_weights[i];
  const T* gy = grad_y + n * D;
  const T* ey = expert_y + p * D;
  T* gey = grad_expert_y + p * D;
  float dot = 0.0f;
  for (int64_t d = threadIdx.x; d < D; d += kWarp) {
    const float g = load(gy, d);
    store(gey, d, w * g);
    dot += g * load(ey, d);
  }
  dot = warp_sum(dot);
  if (threadIdx.x == 0) grad_topk_weights[i] = dot;
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock); }

}  // namespace

void moe_dispatch_layout(const MoeDispatchLayoutParams& p) {
  const int E = static_cast<int>(p.num_experts);
  const size_t smem = static_cast<size_t>(E + 1) * sizeof(int32_t);
  layout_kernel<<<1, kLayoutThreads, smem, p.stream>>>(p.topk_idx, p.numel, E, p.min_index, p.pos, p.order, p.counts,
                                                       p.offsets, p.counts_f64);
  CUDA_CHECK_LAUNCH();
  if (p.host_counts) {
    CUDA_CHECK(cudaMemcpyAsync(p.host_counts, p.counts, smem, cudaMemcpyDeviceToHost, p.stream));
    count_host_sync();
    CUDA_CHECK(cudaStreamSynchronize(p.stream));
  }
}

void moe_dispatch_forward(const MoeDispatchForwardParams& p) {
  if (p.N == 0 || p.D == 0) return;
  const dim3 block(kWarp, kRowsPerBlock);
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dispatch_forward_kernel<<<row_blocks(p.N), block, 0, p.stream>>>(
        static_cast<const T*>(p.x), p.pos, static_cast<T*>(p.expert_x), p.N, p.K, p.D, p.M);
  });
  CUDA_CHECK_LAUNCH();
}

void moe_dispatch_backward(const MoeDispatchBackwardParams& p) {
  if (p.N == 0 || p.D == 0) return;
  const dim3 block(kWarp, kRowsPerBlock);
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dispatch_backward_kernel<<<row_blocks(p.N), block, 0, p.stream>>>(
        static_cast<const T*>(p.grad_expert_x), p.pos, static_cast<T*>(p.grad_x), p.N, p.K, p.D, p.M);
  });
  CUDA_CHECK_LAUNCH();
}

void moe_combine_forward(const MoeCombineForwardParams& p) {
  if (p.N == 0 || p.D == 0) return;
  const dim3 block(kWarp, kRowsPerBlock);
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    combine_forward_kernel<<<row_blocks(p.N), block, 0, p.stream>>>(
        static_cast<const T*>(p.expert_y), p.pos, p.topk_weights, static_cast<T*>(p.y), p.N, p.K, p.D, p.M);
  });
  CUDA_CHECK_LAUNCH();
}

void moe_combine_backward(const MoeCombineBackwardParams& p) {
  if (p.N == 0 || p.K == 0) return;
  const dim3 block(kWarp, kRowsPerBlock);
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    combine_backward_kernel<<<row_blocks(p.N * p.K), block, 0, p.stream>>>(
        static_cast<const T*>(p.grad_y), static_cast<const T*>(p.expert_y), p.pos, p.topk_weights,
        static_cast<T*>(p.grad_expert_y), p.grad_topk_weights, p.N, p.K, p.D, p.M);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
