// AdamW over a model's flat parameter buffer (DESIGN.md): the moments m and v are two more flat
// buffers with the parameters' layout. Parameter groups follow each parameter's declared
// weight-decay flag (no decay on norms, embeddings, biases). The update per element is
// core/ops/adamw.h's (torch.optim.AdamW). The buffers live where the parameters do (CPU or CUDA);
// with a bf16 compute copy (mixed precision) each update also rewrites the copy.
#pragma once

#include "core/ops/adamw.h"
#include "core/params.h"

namespace moelab {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

class AdamW {
 public:
  AdamW(const ParamBuffer& params, const AdamWConfig& cfg);

  // One update of every parameter with learning rate lr from the gradients in params' gradient
  // buffer. Steps count from 1 (bias correction).
  void step(const Exec& ex, double lr);

  int64_t steps_taken() const { return step_; }
  // Resumes from saved moments (the parameters' flat layout) after `step` updates.
  void restore(const Tensor& m, const Tensor& v, int64_t step);
  const Tensor& m() const { return m_; }  // [numel_padded], checkpointed with the model
  const Tensor& v() const { return v_; }

 private:
  const ParamBuffer* params_;
  AdamWConfig cfg_;
  Tensor m_, v_;
  int64_t step_ = 0;
};

}  // namespace moelab
