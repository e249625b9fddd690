// The flat parameter buffer (DESIGN.md, "The tensor core"): every parameter of a model lives in ONE
// allocation, its gradient at the same offset of a second allocation of the same layout, so that
// the optimizer, the gradient norm and the data-parallel reduction each run over one flat tensor.
// Layers declare each parameter once (Hugging Face name, shape, init, weight-decay flag); that
// table drives allocation, initialisation, checkpoints, export and the optimizer's groups.
//
// Lifecycle: declare() every parameter, then allocate() once, then initialize(seed).
// Each parameter starts on a 256-byte boundary (cuBLASLt's preferred alignment); the padding
// between parameters is zero in both buffers, so norms over the flat buffers are unaffected.
// Initialisation draws parameter p's element i from the Philox stream at index (p's offset + i):
// the values depend on the seed and the layout only, never on the device or the rank.
//
// Mixed precision (DESIGN.md, "Precision"): add_compute_copy(BF16) adds a third flat buffer of
// the same layout holding every parameter rounded to bf16 (to nearest even). The matmuls and the
// embedding read compute(i); norms, the router and the optimizer read the f32 master param(i).
// AdamW rewrites the copy in the same pass as the update (core/ops/adamw.h); sync_compute_copy()
// refreshes it from the master after anything else writes the master (initialize() does it
// itself; a checkpoint load must call it). Without a copy, compute(i) is param(i).
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "core/tensor.h"

namespace moelab {

enum class Init { Normal, Zeros, Ones };

struct ParamSpec {
  std::string name;        // e.g. "model.layers.3.self_attn.kv_a_proj_with_mqa.weight"
  Shape shape;
  Init init = Init::Normal;
  float std = 0.02f;       // for Init::Normal
  bool weight_decay = true;
};

class ParamBuffer {
 public:
  struct Entry {
    ParamSpec spec;
    int64_t offset;  // in elements from the start of the flat buffers
  };

  // Declares a parameter and returns its index (for param(i) / grad(i)); names are unique and
  // declaration closes at allocate().
  size_t declare(const ParamSpec& spec);
  // Creates the flat parameter and gradient buffers (gradients zeroed). dtype f32 (training) or f64
  // (gradient checks). with_grads = false makes a store of named non-gradient buffers (the
  // aux-loss-free expert bias): same declaration and initialisation, no gradient buffer.
  void allocate(Device device, DType dtype = DType::F32, bool with_grads = true);
  void initialize(uint64_t seed) const;
  void zero_grads() const;
  void add_compute_copy(DType dtype);  // after allocate(); bf16
  void sync_compute_copy() const;      // compute copy = dtype(master); a no-op without a copy

  bool allocated() const { return params_.defined(); }
  Tensor param(const std::string& name) const;  // a view, shaped as declared
  Tensor grad(const std::string& name) const;
  Tensor param(size_t index) const;
  Tensor grad(size_t index) const;
  Tensor compute(size_t index) const;  // the compute copy's view, or param(index) without one
  bool has_compute_copy() const { return compute_.defined(); }
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  const std::vector<Entry>& entries() const { return entries_; }
  const Tensor& flat_params() const { return params_; }  // [numel_padded]
  const Tensor& flat_grads() const { return grads_; }
  const Tensor& flat_compute() const { return compute_; }  // undefined without a compute copy
  int64_t numel() const;         // parameters, without the alignment padding
  int64_t numel_padded() const { return next_offset_; }

 private:
  const Entry& entry(const std::string& name) const;
  Tensor view(const Tensor& flat, const Entry& e) const;

  std::vector<Entry> entries_;
  std::unordered_map<std::string, size_t> index_;
  int64_t next_offset_ = 0;
  Tensor params_, grads_, compute_;
};

}  // namespace moelab
