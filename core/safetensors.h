// The safetensors format (Hugging Face): an 8-byte little-endian header length N, N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"<key>": "<string>", ...}}
// then the raw little-endian tensor bytes, offsets relative to the end of the header.
// moelab uses it for golden test files, checkpoints and Hugging Face export.
//
// Reading validates everything before trusting it, so a truncated or hostile file gives a
// moelab::Error that names the file and the problem, never a crash or a huge allocation.
// Writing goes to "<path>.tmp" and renames it into place, so a crash never leaves half a file
// under the real name.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace moelab {

struct Safetensors {
  std::vector<std::pair<std::string, Tensor>> tensors;  // CPU tensors, in file order
  std::map<std::string, std::string> metadata;

  bool contains(const std::string& name) const;
  const Tensor& at(const std::string& name) const;  // throws naming the missing tensor
};

// Header lengths above this are rejected before any allocation (real headers are kilobytes).
constexpr uint64_t kMaxSafetensorsHeaderBytes = 100u << 20;

Safetensors read_safetensors(const std::string& path);
// Tensors may live on any device (copied to the host to write). Names must be unique.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// The safetensors dtype strings of moelab's dtypes: F32, F64, BF16, F8_E4M3, I32.
const char* safetensors_dtype_name(DType t);

}  // namespace moelab
