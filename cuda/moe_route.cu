// MoE routing kernels (MODEL.md, "DeepSeekMoE"; the order and tie rules of core/ops/moe_route.h).
// Top-k: one warp per token. The order "a ranks before b" (larger first, NaN above every number,
// equal values by the lower index) is a strict total order, so the k-th pick is simply the best
// entry that ranks after the (k-1)-th: K warp-wide arg-max passes, no per-token storage, and the
// result is the CPU's whatever the reduction tree. The selection scores s + b are the same f32
// additions as on the CPU, so the chosen experts are exactly the CPU's.
// Gates: one thread (forward) or one warp (backward) per token, sums in k order (multiply, then add)
// contraction (the CPU's roundings). Capacity: the assignments grouped by expert with the layout
// kernel of cuda/moe_dispatch.cu, then each assignment counts the entries of its expert that rank
// before it (higher score, ties by the lower assignment index = the CPU's stable sort).
#include <cuda_runtime.h>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/moe_dispatch.h"
#include "cuda/moe_route.h"

namespace moelab::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;     // top-k and gate backward: 4 warps = 128 threads per block
constexpr int kThreadsPerBlock = 256;  // one thread per token or per assignment

// "x scores higher than y": larger first, NaN above every number (as torch.topk).
__device__ __forceinline__ bool higher(float x, float y) { return isnan(x) ? !isnan(y) : !isnan(y) && x > y; }

// "(va, a) ranks before (vb, b)": a strict total order; equal values go to the lower index.
__device__ __forceinline__ bool ranks_before(float va, int64_t a, float vb, int64_t b) {
  if (higher(va, vb)) return true;
  if (higher(vb, va)) return false;
  return a < b;
}

// The best (v, i) of the warp; a lane without a candidate passes i = -1. Every lane gets the result.
__device__ __forceinline__ void warp_best(float& v, int& i) {
  for (int off = kWarp / 2; off > 0; off /= 2) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int oi = __shfl_xor_sync(0xffffffffu, i, off);
    if (oi >= 0 && (i < 0 || ranks_before(ov, oi, v, i))) {
      v = ov;
      i = oi;
    }
  }
}

// Shared memory per warp when n_group > 1: G group scores (f32) then G kept flags (i32).
// A group's score sums its `summed` best selection scores (>= 1, <= E / G: the op checks).
__global__ void route_topk_kernel(const float* scores, const float* bias, int32_t* topk_idx, int64_t rows, int E,
                                  int K, int G, int topk_group, int summed) {
  extern __shared__ float group_smem[];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (row >= rows) return;  // whole warps leave together: the shuffles below stay full-warp
  const int lane = threadIdx.x;
  const float* s = scores + row * E;
  auto sel = [&](int e) { return bias ? s[e] + bias[e] : s[e]; };  // the selection score (CPU: same f32 add)
  const int per_group = E / G;
  float* group_score = group_smem + static_cast<int64_t>(threadIdx.y) * 2 * G;
  int* group_kept = reinterpret_cast<int*>(group_score + G);
  if (G > 1) {
    // Group score: the sum of the group's `summed` best selection scores, one lane per group. As for
    // the top-K below, the j-th best is the best entry that ranks after the (j-1)-th (no per-group
    // storage); the sum adds them best first, as the CPU does, so it rounds as the CPU's does.
    for (int g = lane; g < G; g += kWarp) {
      float sum = 0.0f, prev_v = 0.0f;
      int prev_i = -1;
      for (int j = 0; j < summed; ++j) {
        float best_v = 0.0f;
        int best_i = -1;
        for (int e = g * per_group; e < (g + 1) * per_group; ++e) {
          const float v = sel(e);
          if (prev_i >= 0 && !ranks_before(prev_v, prev_i, v, e)) continue;  // already summed
          if (best_i < 0 || ranks_before(v, e, best_v, best_i)) {
            best_v = v;
            best_i = e;
          }
        }
        sum = j == 0 ? best_v : sum + best_v;  // the first term as it is (the CPU starts from it, not from 0)
        prev_v = best_v;
        prev_i = best_i;
      }
      group_score[g] = sum;
    }
    __syncwarp();
    // Kept: the topk_group groups that rank first (rank = how many groups rank before this one).
    for (int g = lane; g < G; g += kWarp) {
      int rank = 0;
      for (int h = 0; h < G; ++h) rank += ranks_before(group_score[h], h, group_score[g], g);
      group_kept[g] = rank < topk_group;
    }
    __syncwarp();
  }
  float prev_v = 0.0f;
  int prev_i = -1;  // the previous pick; -1 before the first
  for (int k = 0; k < K; ++k) {
    float best_v = 0.0f;
    int best_i = -1;
    for (int e = lane; e < E; e += kWarp) {
      // An expert of a losing group gets -inf, as on the CPU (it can still win a tie on -inf).
      const float v = G == 1 || group_kept[e / per_group] ? sel(e) : -INFINITY;
      if (prev_i >= 0 && !ranks_before(prev_v, prev_i, v, e)) continue;  // already picked
      if (best_i < 0 || ranks_before(v, e, best_v, best_i)) {
        best_v = v;
        best_i = e;
      }
    }
    warp_best(best_v, best_i);
    if (lane == 0) topk_idx[row * K + k] = best_i;
    prev_v = best_v;
    prev_i = best_i;
  }
}

// One thread per token.
__global__ void gate_forward_kernel(const float* scores, const int32_t* topk_idx, float* topk_weights, int64_t rows,
                                    int64_t E, int64_t K, bool norm_topk_prob, float scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const float* s = scores + row * E;
  const int32_t* idx = topk_idx + row * K;
  bool bad = false;
  for (int64_t k = 0; k < K; ++k) bad = bad || idx[k] < 0 || idx[k] >= E;
  float denom = 1.0f;
  if (norm_topk_prob && !bad) {
    denom = static_cast<float>(1e-20);  // kMoeNormEps of core/ops/moe_route.h
    for (int64_t k = 0; k < K; ++k) denom += s[idx[k]];
  }
  for (int64_t k = 0; k < K; ++k) topk_weights[row * K + k] = bad ? NAN : s[idx[k]] / denom * scale;
}

// One warp per token; each lane writes the experts e = lane, lane + 32, ... of the row.
__global__ void gate_backward_kernel(const float* grad_topk_weights, const float* scores, const int32_t* topk_idx,
                                     float* grad_scores, int64_t rows, int64_t E, int64_t K, bool norm_topk_prob,
                                     float scale) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (row >= rows) return;
  const float* s = scores + row * E;
  const float* gg = grad_topk_weights + row * K;
  const int32_t* idx = topk_idx + row * K;
  bool bad = false;
  for (int64_t k = 0; k < K; ++k) bad = bad || idx[k] < 0 || idx[k] >= E;
  float denom = static_cast<float>(1e-20), dot = 0.0f;  // S and sum_k grad_g_k * s_k, in k order
  if (norm_topk_prob && !bad)
    for (int64_t k = 0; k < K; ++k) {
      denom += s[idx[k]];
      dot = __fadd_rn(dot, __fmul_rn(gg[k], s[idx[k]]));  // separate multiply and add (no FMA contraction)
    }
  float* gs = grad_scores + row * E;
  for (int64_t e = threadIdx.x; e < E; e += kWarp) {
    float v = 0.0f;
    for (int64_t k = 0; k < K; ++k)  // the last k that selects e wins, as the CPU's assignments do
      if (idx[k] == e) v = norm_topk_prob ? scale / denom * (gg[k] - dot / denom) : scale * gg[k];
    gs[e] = bad ? NAN : v;
  }
}

// One thread per assignment i = n * K + k (every index valid: the launcher checked the counts).
__global__ void capacity_drop_kernel(const float* scores, const int32_t* topk_idx, const int32_t* counts,
                                     const int32_t* offsets, const int32_t* order, int32_t* kept_idx, int64_t numel,
                                     int64_t E, int64_t K, int64_t capacity) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= numel) return;
  const int32_t e = topk_idx[i];
  const int64_t count = counts[e];
  if (count <= capacity) {
    kept_idx[i] = e;
    return;
  }
  const float si = scores[(i / K) * E + e];
  const int32_t* mine = order + offsets[e];  // the expert's assignments, in assignment order
  int64_t rank = 0;
  for (int64_t j = 0; j < count && rank < capacity; ++j) {
    const int64_t a = mine[j];
    rank += a != i && ranks_before(scores[(a / K) * E + e], a, si, i);
  }
  kept_idx[i] = rank < capacity ? e : -1;
}

}  // namespace

void moe_route_topk(const MoeRouteTopkParams& p) {
  if (p.rows == 0) return;
  const dim3 block(kWarp, kWarpsPerBlock);
  const size_t smem = p.n_group > 1 ? static_cast<size_t>(kWarpsPerBlock) * 2 * p.n_group * sizeof(float) : 0;
  // 0 asks for Hugging Face's rule: the top 2 with a bias (V3), the best alone without (V2).
  const int64_t summed = p.group_topk > 0 ? p.group_topk : (p.bias ? 2 : 1);
  route_topk_kernel<<<blocks_for(p.rows, kWarpsPerBlock), block, smem, p.stream>>>(
      p.scores, p.bias, p.topk_idx, p.rows, static_cast<int>(p.E), static_cast<int>(p.K), static_cast<int>(p.n_group),
      static_cast<int>(p.topk_group), static_cast<int>(summed));
  CUDA_CHECK_LAUNCH();
}

void moe_gate_forward(const MoeGateForwardParams& p) {
  if (p.rows == 0) return;
  gate_forward_kernel<<<blocks_for(p.rows, kThreadsPerBlock), kThreadsPerBlock, 0, p.stream>>>(
      p.scores, p.topk_idx, p.topk_weights, p.rows, p.E, p.K, p.norm_topk_prob, p.scale);
  CUDA_CHECK_LAUNCH();
}

void moe_gate_backward(const MoeGateBackwardParams& p) {
  if (p.rows == 0) return;
  const dim3 block(kWarp, kWarpsPerBlock);
  gate_backward_kernel<<<blocks_for(p.rows, kWarpsPerBlock), block, 0, p.stream>>>(
      p.grad_topk_weights, p.scores, p.topk_idx, p.grad_scores, p.rows, p.E, p.K, p.norm_topk_prob, p.scale);
  CUDA_CHECK_LAUNCH();
}

void moe_capacity_drop(const MoeCapacityDropParams& p) {
  const int64_t numel = p.rows * p.K;
  int32_t* counts = p.workspace;             // [E + 1]
  int32_t* offsets = counts + (p.E + 1);     // [E + 1]
  int32_t* order = offsets + (p.E + 1);      // [numel]
  MoeDispatchLayoutParams layout;
  layout.topk_idx = p.topk_idx;
  layout.numel = numel;
  layout.num_experts = p.E;
  layout.min_index = 0;  // the selection before the drops: every entry must be an expert
  layout.order = order;  // no pos: the drop kernel walks each expert's assignments through order
  layout.counts = counts;
  layout.offsets = offsets;
  layout.host_counts = p.host_counts;
  layout.stream = p.stream;
  moe_dispatch_layout(layout);
  if (p.host_counts[p.E] != 0 || numel == 0) return;  // an index out of [0, E): the op reports it
  capacity_drop_kernel<<<blocks_for(numel, kThreadsPerBlock), kThreadsPerBlock, 0, p.stream>>>(
      p.scores, p.topk_idx, counts, offsets, order, p.kept_idx, numel, p.E, p.K, p.capacity);
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
