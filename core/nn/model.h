// The whole model (MODEL.md): embedding -> L blocks -> final RMSNorm -> LM head -> cross-entropy,
// plus D_mtp multi-token-prediction modules and the balance losses of every MoE layer.
//
// Input: tokens i32 [B, T + 1 + D_mtp], one window per sequence (tests/reference/GOLDEN.md). The
// main model reads tokens[:, 0:T] and predicts tokens[:, 1:T+1]; MTP module k (1..D_mtp) embeds
// tokens[:, k:T+k] and predicts tokens[:, k+1:T+k+1].
//   total = L_main + (mtp_loss_weight / D_mtp) * sum_k L_k + sum over MoE layers of the balance terms
// MTP module k (core/nn/mtp.h) is fed the SHARED embedding of its tokens and the previous depth's
// hidden state (for k = 1 the last block's output before model.norm, for k > 1 module k-1's
// output); its output goes through its own shared_head.norm and the SHARED lm_head (the embedding
// when tied). The Model runs the shared pieces, so each has one gradient that every use adds to.
//
// forward() fills Saved (caller-owned), the losses and loads left on the model's device in its
// statistics (accumulate_stats adds them to a training step's, read_losses / moe_stats read them on
// the host); backward() ACCUMULATES the gradient
// of grad_scale * total into the parameter gradients (grad_scale = 1 / accumulation steps). With a
// GradSync (data parallel, core/nn/grad_sync.h) backward tells it as each layer's gradients become
// final, so their reduction overlaps the layers still to come.
#pragma once

#include <string>
#include <vector>

#include "core/nn/block.h"
#include "core/nn/config.h"
#include "core/nn/context.h"
#include "core/nn/embedding.h"
#include "core/nn/grad_sync.h"
#include "core/nn/cost.h"
#include "core/nn/linear.h"
#include "core/nn/mtp.h"
#include "core/nn/norm.h"
#include "core/ops/step_stats.h"
#include "core/params.h"

namespace moelab {

class Model {
 public:
  struct Losses {
    double total = 0, main = 0;
    std::vector<double> mtp;                  // [D_mtp]
    double seq_aux = 0, aux = 0, z = 0;       // summed over MoE layers, coefficients applied
  };

  // What one loss head (main or MTP depth k) keeps for backward.
  struct HeadSaved {
    Tensor ids, targets;                      // [B, T] i32
    RMSNorm::Saved norm;
    Tensor normed;                            // [N, D]
    Tensor logits;                            // [N, V]
    Tensor lse, losses;                       // [N]
    Tensor ce;                                // f64 [kCrossEntropyStats]: the loss sum, valid rows, bad target
  };
  // What MTP depth k keeps: the module's Saved, and the shared embedding's and loss head's part.
  struct MtpSaved {
    Tensor emb;                               // [N, D] Emb(t_{i+k})
    MtpModule::Saved module;
    Tensor out;                               // [N, D] the module's output
    HeadSaved head;
  };
  struct Saved {
    std::vector<Tensor> hidden;               // [L + 1] x [N, D]: the embedding, then each block's output
    std::vector<Block::Saved> blocks;         // [L]
    HeadSaved head;
    std::vector<MtpSaved> mtp;                // [D_mtp]
  };

  explicit Model(const ModelConfig& cfg);     // validates cfg, declares every parameter and buffer
  Model(const Model&) = delete;               // layers point into the parameter buffers
  Model& operator=(const Model&) = delete;

  void allocate(Device device, DType dtype = DType::F32);
  void initialize(uint64_t seed);

  void forward(const Context& ctx, const Tensor& tokens, Saved& saved) const;
  void backward(const Context& ctx, const Saved& saved, double grad_scale = 1.0, GradSync* sync = nullptr) const;

  // The statistics of a forward (core/ops/step_stats.h): the layout of a step's accumulator for
  // this model, and acc += the forward's losses (scaled by `scale`) and loads, on acc's device.
  StepStatsLayout stats_layout() const;
  void accumulate_stats(const Exec& ex, const Saved& saved, double scale, const Tensor& acc) const;
  // Losses from an accumulator (host f64 [stats_layout().size()]), each divided by `ranks` (the
  // data-parallel mean; 1: as summed).
  Losses losses_of(const double* acc, double ranks = 1) const;
  // The forward's losses on the host, through accumulate_stats with scale 1 (the arithmetic of the
  // training step); on CUDA a small copy that waits for the device. A bad target (which CUDA
  // records instead of throwing) throws here, naming the head.
  Losses read_losses(const Context& ctx, const Saved& saved) const;

  // The MoE layers in HF layer order (MTP blocks after the trunk), their stats from a forward on
  // the host (MoE::read_stats), and the aux-loss-free bias update with the step's global loads:
  // f64 [layers, E] on the model's device (a slice of the step's accumulator), one small kernel per
  // MoE layer (MoE::update_bias); nothing comes back.
  std::vector<int64_t> moe_layers() const;
  std::vector<MoEStats> moe_stats(const Saved& saved) const;
  int64_t dropped(const Saved& saved) const;  // assignments the capacity factor dropped, all MoE layers
  void update_bias(const Exec& ex, const Tensor& loads) const;
  // Fills bias_min / bias_max of stats (moe_stats' order) from the current biases, for the log step
  // (on CUDA one small copy to the host per MoE layer).
  void read_bias_ranges(std::vector<MoEStats>& stats) const;
  // Every MoE layer (trunk and MTP) moves its tokens through `dispatch` (expert parallelism:
  // dist/ep_dispatch.h); nullptr = the built-in single-process one. Not owned.
  void set_expert_dispatch(const ExpertDispatch* dispatch);
  // moe_layers()' routed experts in the flat parameter buffer: [layer][expert] (MoE::expert_ranges).
  std::vector<std::vector<FlatRange>> expert_ranges() const;
  int64_t expert_elements() const;  // their total size (padding included)

  // Generation with a KV cache (core/nn/decode.cpp): embedding -> blocks (decode) -> final norm ->
  // LM head; the MTP modules are not used at inference.
  struct KVCache {
    std::vector<Block::KVCache> layers;  // [L]
    int64_t batch = 0, capacity = 0;     // B sequences of at most S = capacity positions
    int64_t length = 0;                  // positions [0, length) of every sequence are cached
    DType dtype = DType::F32;
    int64_t elements_per_token() const;  // cached numbers per position of one sequence, all layers
    int64_t bytes_per_token() const { return elements_per_token() * static_cast<int64_t>(dtype_size(dtype)); }
  };
  // Zero-filled, in the parameters' dtype and device; capacity <= max_position_embeddings.
  KVCache new_cache(int64_t batch, int64_t capacity) const;
  // ids: i32 [B, n] (B = ctx.batch, n = ctx.seq_len), the next n tokens of each sequence, at positions
  // [pos, pos + n); the cache must hold [0, pos) (pos <= cache.length), and afterwards holds
  // [0, pos + n). logits: [B*n, V], the next-token logits of every new position. pos = 0 with the
  // whole sequence is a full forward (a prefill).
  void decode(const Context& ctx, const Tensor& ids, int64_t pos, KVCache& cache, const Tensor& logits) const;
  // Arena bytes one decode() of `rows` = B*n tokens allocates at most (logits are the caller's).
  size_t decode_arena_bytes(int64_t rows) const;

  // What the model costs (core/nn/cost.h), by part, and in total: the sum of its layers' costs plus
  // the hidden states, loss heads and gradients the Model allocates itself.
  struct CostParts {
    LayerCost embedding;            // the table, the main input's ids and its lookup
    std::vector<LayerCost> blocks;  // [L] each block, with the hidden state it writes and its gradient
    LayerCost head;                 // the main loss head: model.norm, the LM head (its weight when
                                    // untied), cross-entropy
    std::vector<LayerCost> mtp;     // [D_mtp] each module with its tokens' lookup and its loss head
                                    // (the shared weights are the embedding's and the head's)
    LayerCost total() const;
  };
  CostParts cost_parts(const CostShape& shape) const;
  LayerCost cost(const CostShape& shape) const { return cost_parts(shape).total(); }

  const std::vector<Block>& blocks() const { return blocks_; }  // the trunk's [L]

  const ModelConfig& config() const { return cfg_; }
  ParamBuffer& params() { return params_; }
  const ParamBuffer& params() const { return params_; }
  ParamBuffer& buffers() { return buffers_; }
  const ParamBuffer& buffers() const { return buffers_; }

 private:
  Tensor head_weight() const;
  Tensor head_grad() const;
  const MoE& moe_of(int64_t layer) const;  // the MoE of one of moe_layers() (trunk or MTP block)
  // norm -> head -> cross-entropy on tokens[:, k+1 : T+k+1] (its statistics into hs.ce).
  void head_forward(const Context& ctx, const RMSNorm& norm, const Tensor& h, const Tensor& tokens, int64_t k,
                      HeadSaved& hs) const;
  // Adds d(weight * loss)/d h to grad_h (which it overwrites).
  void head_backward(const Context& ctx, const RMSNorm& norm, const HeadSaved& hs, double weight,
                     const Tensor& grad_h) const;
  // One use of a loss head without its norm (whose owner counts it): the LM head's GEMM (a matmul of
  // every loss head, tied or not) and what head_forward and head_backward allocate.
  LayerCost head_use_cost(const CostShape& shape) const;

  ModelConfig cfg_;
  ParamBuffer params_, buffers_;
  Embedding embed_;
  std::vector<Block> blocks_;
  RMSNorm final_norm_;
  Linear lm_head_;                            // unused when tie_word_embeddings
  std::vector<MtpModule> mtp_;
  // Where each part's parameters start in the flat buffer: after block l's backward the gradients
  // from block_grad_offset_[l] on are final (the layout runs embedding, blocks, norm + head, MTP).
  std::vector<int64_t> block_grad_offset_;
  int64_t head_grad_offset_ = 0, mtp_grad_offset_ = 0;
};

}  // namespace moelab
