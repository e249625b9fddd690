// AdamW over a model's flat parameter buffer (DESIGN.md): the moments m and v are two more flat
// buffers with the parameters' layout. Parameter groups follow each parameter's declared
// weight-decay flag (no decay on norms, embeddings, biases). The update per element is
// core/ops/adamw.h's (torch.optim.AdamW). The buffers live where the parameters do (CPU or CUDA);
// with a bf16 compute copy (mixed precision) each update also rewrites the copy.
// Sharded (ZeRO-1, dist/data_parallel.h): the optimizer updates only the flat ranges it owns and
// keeps m and v for those alone, range after range; the other ranks update the rest.
#pragma once

#include <vector>

#include "core/nn/grad_sync.h"
#include "core/ops/adamw.h"
#include "core/params.h"

namespace moelab {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  // owned: the flat ranges this optimizer updates (sorted, disjoint); empty: the whole buffer.
  AdamW(const ParamBuffer& params, const AdamWConfig& cfg, std::vector<FlatRange> owned = {});

  // One update of every owned parameter element with learning rate lr from the gradients in
  // params' gradient buffer. Steps count from 1 (bias correction).
  void step(const Exec& ex, double lr);

  int64_t steps_taken() const { return step_; }
  // Resumes after `step` updates from moments in the parameters' full flat layout [numel_padded]
  // (a checkpoint's, whatever the rank count that wrote it): the owned ranges are taken.
  void restore(const Tensor& m, const Tensor& v, int64_t step);
  // The moments of the owned ranges, one after the other: [numel_padded] when unsharded.
  const Tensor& m() const { return m_; }
  const Tensor& v() const { return v_; }
  const std::vector<FlatRange>& owned() const { return owned_; }
  int64_t numel_padded() const { return params_->numel_padded(); }
  bool sharded() const { return owned_.size() != 1 || owned_[0].begin != 0 || owned_[0].end != params_->numel_padded(); }

 private:
  const ParamBuffer* params_;
  AdamWConfig cfg_;
  std::vector<FlatRange> owned_;
  Tensor m_, v_;
  int64_t step_ = 0;
};

}  // namespace moelab
