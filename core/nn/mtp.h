// One multi-token-prediction module (MODEL.md, "Multi-token prediction (MTP)"). Module k (1..D_mtp)
// combines the previous depth's hidden state h (for k = 1 the last trunk block's output, before the
// final norm) with the embedding of the token k positions ahead, t_{i+k}:
//   h' = W_eh [ enorm(Emb(t_{i+k})) ; hnorm(h) ]      W_eh: [D, 2D], the embedding half first
//   out = Block(h')                                    one full transformer block (attention + FFN)
// and the model's loss head predicts t_{i+k+1} from shared_head.norm(out). The embedding and the LM
// head are SHARED with the trunk, so the Model runs them (core/nn/model.h) and their gradients add
// up in one place; this module owns enorm, hnorm, eh_proj, its block and shared_head.norm.
// HF names under "model.layers.{L+k-1}": enorm, hnorm, eh_proj, the block's own names, shared_head.norm.
// Contract (core/nn/context.h): backward OVERWRITES grad_emb and grad_h and ACCUMULATES the
// parameter gradients.
#pragma once

#include <string>

#include "core/nn/block.h"
#include "core/nn/config.h"
#include "core/nn/context.h"
#include "core/nn/cost.h"
#include "core/nn/linear.h"
#include "core/nn/norm.h"
#include "core/params.h"

namespace moelab {

class MtpModule {
 public:
  struct Saved {
    RMSNorm::Saved enorm, hnorm;
    Tensor cat;          // [N, 2D] [enorm(emb) ; hnorm(h)]
    Tensor h_in;         // [N, D] eh_proj's output, the block's input
    Block::Saved block;
  };

  MtpModule() = default;
  // prefix: "model.layers.{L+k-1}". Declares enorm, hnorm, eh_proj, the block (an MoE block when
  // cfg.ffn = moe), then shared_head.norm, the order of the released checkpoints.
  MtpModule(ParamBuffer& params, ParamBuffer& buffers, const std::string& prefix, const ModelConfig& cfg);

  // emb: [N, D] Emb(t_{i+k}); h: [N, D] the previous depth's hidden state -> out: [N, D] the block's output.
  void forward(const Context& ctx, const Tensor& emb, const Tensor& h, const Tensor& out, Saved& saved) const;
  // grad_out: d total / d out -> grad_emb: d total / d emb, grad_h: d total / d h (both [N, D]).
  // balance_grad_scale: d total / d (the block's balance loss); see MoE::backward.
  void backward(const Context& ctx, const Saved& saved, const Tensor& grad_out, double balance_grad_scale,
                const Tensor& grad_emb, const Tensor& grad_h) const;

  // Its parameters, eh_proj's GEMM, the block, and the tensors it allocates. Nothing is cached for
  // generation: the modules are not used at inference.
  LayerCost cost(const CostShape& shape) const;

  const RMSNorm& head_norm() const { return head_norm_; }  // shared_head.norm, before the shared LM head
  const Block& block() const { return block_; }
  Block& block() { return block_; }

 private:
  RMSNorm enorm_, hnorm_;
  Linear eh_proj_;
  Block block_;
  RMSNorm head_norm_;
  int64_t dim_ = 0;  // D
};

}  // namespace moelab
