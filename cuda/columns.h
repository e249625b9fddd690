// Launcher for the column-block copies of core/ops/columns.h (concat_columns, split_columns,
// slice_columns): a block of `width_bytes` bytes from each of `rows` rows of src to each row of
// dst. Dtype-free: every operand is handled by byte size (i32 token windows, f32, bf16, ...).
// The op calls it once per block (concat and split: twice, slice: once).
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct CopyColumnsParams {
  void* dst = nullptr;        // row r starts at dst + r * dst_pitch (bytes)
  int64_t dst_pitch = 0;
  const void* src = nullptr;  // row r starts at src + r * src_pitch (bytes)
  int64_t src_pitch = 0;
  int64_t rows = 0;
  int64_t width_bytes = 0;    // bytes copied per row; dst and src must not overlap
  Stream stream = nullptr;
};

void copy_columns(const CopyColumnsParams& p);

}  // namespace moelab::cuda
