// Embedding kernels.
// Forward: block (token n, column chunk) copies its slice of weight row ids[n].
// Backward, deterministic without float atomics: a STABLE radix sort of (id, position) pairs (cub)
// groups the tokens of each id into one run with their positions in increasing order; then the
// block (sorted index i, column chunk) that starts a run adds the run's grad_out rows, in token
// order, to its grad_weight row: one writer per element, and the additions happen in the same order
// as in the CPU reference (row[d] += g[d] token by token), so f32 results match it bit for bit.
// Cost: the sort is O(tokens) (4 passes over 32-bit keys); the run kernel reads every grad_out
// element once, but a run is walked serially: an id that occurs k times takes k dependent steps
// (tiny vocabularies, e.g. characters, have long runs; BPE vocabularies short ones).
#include <cuda_bf16.h>

#include <climits>
#include <cub/device/device_radix_sort.cuh>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/device_util.cuh"
#include "cuda/embedding.h"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 128;   // columns per block
constexpr size_t kAlign = 256;  // alignment of every workspace part (cub wants 256 bytes)

size_t align_up(size_t x) { return (x + kAlign - 1) / kAlign * kAlign; }

// Sorting the ids as full 32-bit signed keys puts out-of-range ids in runs of their own too, so a
// bad id can never split the run of a good one.
size_t sort_temp_bytes(int num) {
  size_t bytes = 0;
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, bytes, static_cast<const int32_t*>(nullptr),
                                             static_cast<int32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                             static_cast<int32_t*>(nullptr), num));
  return bytes;
}

unsigned column_blocks(int64_t dim) { return blocks_for(dim, kThreads); }

template <typename T>
__global__ void embedding_forward_kernel(const int32_t* ids, const T* weight, T* out, uint32_t* bad_pos, int64_t vocab,
                                         int64_t dim) {
  const int64_t n = blockIdx.x;
  const int32_t id = ids[n];
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (id < 0 || id >= vocab) {
    if (d == 0) atomicMin(bad_pos, static_cast<uint32_t>(n));  // integer min: the same for any order
    return;
  }
  if (d < dim) out[n * dim + d] = weight[static_cast<int64_t>(id) * dim + d];
}

__global__ void iota_kernel(int32_t* v, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) v[i] = static_cast<int32_t>(i);
}

template <typename T>
__global__ void embedding_backward_kernel(const T* grad_out, const int32_t* sorted_ids, const int32_t* sorted_pos,
                                          float* grad_weight, uint32_t* bad_pos, int64_t tokens, int64_t vocab,
                                          int64_t dim) {
  const int64_t i = blockIdx.x;
  const int32_t id = sorted_ids[i];
  if (i > 0 && sorted_ids[i - 1] == id) return;  // inside a run: its first block does the work
  if (id < 0 || id >= vocab) {
    // The run's first position is its smallest (the sort is stable); the min over runs is the first bad token.
    if (blockIdx.y == 0 && threadIdx.x == 0) atomicMin(bad_pos, static_cast<uint32_t>(sorted_pos[i]));
    return;
  }
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= dim) return;
  float* w = grad_weight + static_cast<int64_t>(id) * dim + d;
  float acc = *w;
  for (int64_t j = i; j < tokens && sorted_ids[j] == id; ++j) acc += load(grad_out, sorted_pos[j] * dim + d);
  *w = acc;
}

}  // namespace

size_t embedding_backward_workspace_bytes(int64_t tokens) {
  if (tokens <= 0) return 0;
  if (tokens > INT_MAX) throw std::runtime_error("embedding_backward: " + std::to_string(tokens) + " tokens, at most 2^31 - 1");
  const size_t ints = align_up(static_cast<size_t>(tokens) * sizeof(int32_t));
  // sorted ids, positions in, sorted positions, cub's temporary storage, and slack to align the base
  return 3 * ints + align_up(sort_temp_bytes(static_cast<int>(tokens))) + kAlign;
}

void embedding_forward(const EmbeddingForwardParams& p) {
  CUDA_CHECK(cudaMemsetAsync(p.bad_pos, 0xff, sizeof(uint32_t), p.stream));
  if (p.tokens == 0) return;
  const dim3 grid(static_cast<unsigned>(p.tokens), column_blocks(p.dim));
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    embedding_forward_kernel<<<grid, kThreads, 0, p.stream>>>(p.ids, static_cast<const T*>(p.weight), static_cast<T*>(p.out),
                                                              p.bad_pos, p.vocab, p.dim);
    CUDA_CHECK_LAUNCH();
  });
}

void embedding_backward(const EmbeddingBackwardParams& p) {
  CUDA_CHECK(cudaMemsetAsync(p.bad_pos, 0xff, sizeof(uint32_t), p.stream));
  if (p.tokens == 0) return;
  const size_t need = embedding_backward_workspace_bytes(p.tokens);
  if (p.workspace_bytes < need)
    throw std::runtime_error("embedding_backward: workspace of " + std::to_string(p.workspace_bytes) + " bytes, needs " +
                             std::to_string(need));
  const int num = static_cast<int>(p.tokens);
  const size_t ints = align_up(static_cast<size_t>(p.tokens) * sizeof(int32_t));
  char* base = reinterpret_cast<char*>(align_up(reinterpret_cast<uintptr_t>(p.workspace)));
  auto sorted_ids = reinterpret_cast<int32_t*>(base);
  auto pos_in = reinterpret_cast<int32_t*>(base + ints);
  auto sorted_pos = reinterpret_cast<int32_t*>(base + 2 * ints);
  void* temp = base + 3 * ints;
  size_t temp_bytes = sort_temp_bytes(num);

  iota_kernel<<<blocks_for(p.tokens, 256), 256, 0, p.stream>>>(pos_in, p.tokens);
  CUDA_CHECK_LAUNCH();
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, temp_bytes, p.ids, sorted_ids, pos_in, sorted_pos, num, 0,
                                             static_cast<int>(sizeof(int32_t) * 8), p.stream));
  const dim3 grid(static_cast<unsigned>(p.tokens), column_blocks(p.dim));
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    embedding_backward_kernel<<<grid, kThreads, 0, p.stream>>>(static_cast<const T*>(p.grad_out), sorted_ids, sorted_pos,
                                                               p.grad_weight, p.bad_pos, p.tokens, p.vocab, p.dim);
    CUDA_CHECK_LAUNCH();
  });
}

}  // namespace moelab::cuda
