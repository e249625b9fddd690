// Column-block copy: one thread per word of the block, with the widest word (16, 8, 4, 2 or 1
// bytes) that divides both pointers, both pitches and the width, so every access is aligned.
#include <cstdint>

#include "cuda/check.h"
#include "cuda/columns.h"
#include "cuda/device_util.cuh"

namespace moelab::cuda {

namespace {

constexpr int kThreads = 256;

template <typename Word>
__global__ void copy_columns_kernel(char* dst, int64_t dst_pitch, const char* src, int64_t src_pitch, int64_t rows,
                                    int64_t words_per_row) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * words_per_row) return;
  const int64_t r = i / words_per_row, w = i % words_per_row;
  reinterpret_cast<Word*>(dst + r * dst_pitch)[w] = reinterpret_cast<const Word*>(src + r * src_pitch)[w];
}

template <typename Word>
void launch(const CopyColumnsParams& p) {
  const int64_t words = p.width_bytes / static_cast<int64_t>(sizeof(Word));
  copy_columns_kernel<Word><<<blocks_for(p.rows * words, kThreads), kThreads, 0, p.stream>>>(
      static_cast<char*>(p.dst), p.dst_pitch, static_cast<const char*>(p.src), p.src_pitch, p.rows, words);
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void copy_columns(const CopyColumnsParams& p) {
  if (p.rows == 0 || p.width_bytes == 0) return;
  // Every quantity that must be a multiple of the word size, OR-ed: its lowest set bit bounds it.
  const uint64_t bits = reinterpret_cast<uintptr_t>(p.dst) | reinterpret_cast<uintptr_t>(p.src) |
                        static_cast<uint64_t>(p.dst_pitch) | static_cast<uint64_t>(p.src_pitch) |
                        static_cast<uint64_t>(p.width_bytes);
  if (bits % 16 == 0) launch<uint4>(p);
  else if (bits % 8 == 0) launch<uint2>(p);
  else if (bits % 4 == 0) launch<uint32_t>(p);
  else if (bits % 2 == 0) launch<uint16_t>(p);
  else launch<uint8_t>(p);
}

}  // namespace moelab::cuda
