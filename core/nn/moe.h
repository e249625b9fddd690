// DeepSeekMoE layer (MODEL.md, "DeepSeekMoE" and "Load balancing"; tests/reference/GOLDEN.md fixes
// every choice MODEL.md leaves open):
//   logits = x W_gate^T [N, E];  s = sigmoid(logits) or softmax(logits)
//   topk_idx = top-K of s + b (b = aux-loss-free bias), group-limited when n_group > 1
//   g = s_sel (/ (sum s_sel + 1e-20) if norm_topk_prob) * routed_scaling_factor
//   capacity_factor c > 0: each expert keeps its ceil(c*N*K/E) best-scored assignments, N = this
//   process's tokens (under data or expert parallelism each process caps its own, per device as
//   in GShard; tests/mpi/test_data_parallel.cpp checks the rule)
//   y = shared(x) + sum_k g_k expert_{topk_idx[k]}(x)         (the residual is added by the block)
// plus the balance losses (sequence-wise, batch-level, z-loss), left with the loads in the layer's
// raw statistics on the device (Saved::stats; read on the host as MoEStats), their gradients taken
// in backward, and the aux-loss-free bias update after the optimizer step.
// Routing runs in the activation dtype: f32 for CPU training, f64 for gradient checks.
// Experts and shared experts are SwiGLUMLP. The routed experts run either grouped (the real path:
// an ExpertDispatch gathers each expert's rows, one GEMM chain per expert) or naive (a per-token
// loop over its K experts: the reference the grouped path is tested against), chosen at run time.
// Contract (core/nn/context.h): backward OVERWRITES grad_x and ACCUMULATES the parameter gradients.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/nn/config.h"
#include "core/nn/context.h"
#include "core/nn/cost.h"
#include "core/nn/expert_dispatch.h"
#include "core/nn/grad_sync.h"
#include "core/nn/linear.h"
#include "core/nn/mlp.h"

namespace moelab {

// One layer's statistics of one forward, on the host (MoE::read_stats: on CUDA a small copy that
// waits for the device, so the training step never makes one: it accumulates Saved::stats on the
// device, core/ops/step_stats.h).
struct MoEStats {
  std::vector<double> load;             // [E] selections per expert (before capacity drops)
  int64_t dropped = 0;                  // assignments dropped by the capacity factor
  double max_vio = 0;                   // (max load - mean load) / mean load (moe_max_vio)
  // The range of e_score_correction_bias (0 without aux_free_bias): the bias after the step's
  // update, filled at the log step (MoE::bias_range, Model::read_bias_ranges).
  double bias_min = 0, bias_max = 0;
  double seq_aux_loss = 0, aux_loss = 0, z_loss = 0;  // already multiplied by their coefficients
  double balance_loss() const { return seq_aux_loss + aux_loss + z_loss; }
};

// MaxVio of one layer's loads over `tokens` rows of K selections: (max load - mean) / mean, mean =
// tokens * K / E.
double moe_max_vio(const std::vector<double>& load, int64_t tokens, int64_t k);

class MoE {
 public:
  struct Saved {
    Tensor x;             // [N, D] the input
    Tensor x_router;      // [N, D] the input in the router's full precision (x itself unless bf16)
    Tensor logits;        // [N, E] router logits (this and every router tensor: ctx.stat_dtype())
    Tensor scores;        // [N, E] s
    Tensor topk_idx;      // i32 [N, K] the selection, best first (before capacity drops)
    Tensor expert_idx;    // i32 [N, K] topk_idx with dropped assignments -1 (topk_idx itself when dropless)
    Tensor topk_weights;  // [N, K] gate values g (dropped ones included: they only do not reach y)
    bool naive = false;   // which path ran the experts
    // grouped: the dispatch layout, expert_y [M, D] grouped by chunk then expert, one Saved per
    // (chunk, local expert): experts[c * count + i].
    // naive: no layout, expert_y [N*K, D] (row n*K + k: assignment (n, k)), one Saved per assignment.
    std::shared_ptr<const DispatchLayout> layout;
    Tensor expert_y;
    std::vector<SwiGLUMLP::Saved> experts;
    SwiGLUMLP::Saved shared;
    // Data parallel with the batch-level aux loss: the selection fractions f [E] of the whole
    // batch, all processes' rows (core/ops/moe_balance.h); empty: this process's batch is the batch.
    std::vector<double> batch_fractions;
    // The raw statistics, f64 [kMoeStats + E] on the model's device (core/ops/step_stats.h):
    // seq_aux, aux and z losses (coefficients applied, 0 when off), then the selections per expert
    // before capacity drops. dropped: the assignments the capacity factor dropped (a host number:
    // the drop op returns it with the row counts the host needs anyway).
    Tensor stats;
    int64_t dropped = 0;
  };

  MoE() = default;
  // Declares, under prefix (e.g. "model.layers.3.mlp"): <prefix>.experts.{e}.gate_proj/up_proj/
  // down_proj.weight, <prefix>.gate.weight [E, D] (normal init, weight-decayed: HF's router is a
  // Linear weight, and GOLDEN.md exempts only norms, embeddings and biases), <prefix>.shared_experts.*
  // when n_shared_experts > 0, and in `buffers` (no gradient) <prefix>.gate.e_score_correction_bias
  // [E] (zeros) when aux_free_bias. Every matrix: normal(0, initializer_range).
  MoE(ParamBuffer& params, ParamBuffer& buffers, const std::string& prefix, const ModelConfig& cfg);

  // x: [N, D], N = ctx.tokens() = ctx.batch * ctx.seq_len (sequences are consecutive rows) -> y: [N, D].
  // saved.stats and saved.dropped get the loads, the drops and the balance losses. y must not alias x.
  void forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& saved) const;
  // saved's statistics on the host, MaxVio computed from its loads (bias range left 0).
  MoEStats read_stats(const Saved& saved) const;
  // grad_y: d total / d y. balance_grad_scale: d total / d (stats.balance_loss()): 1 normally, the
  // gradient-accumulation scale otherwise. Includes the balance losses' gradients into the router.
  // grad_x must not alias grad_y.
  void backward(const Context& ctx, const Saved& saved, const Tensor& grad_y, double balance_grad_scale,
                const Tensor& grad_x) const;
  // The aux-loss-free update after the optimizer step: b_i += bias_update_speed * sign(mean(load) - load_i)
  // (sign(0) = 0; the op core/ops/moe_bias.h). `load`: f64 [E] on the model's device, the GLOBAL
  // per-expert load of the step (summed over micro-batches and ranks by the caller). Does nothing
  // without aux_free_bias (there is no bias).
  void update_bias(const Exec& ex, const Tensor& load) const;
  // {min, max} of e_score_correction_bias ({0, 0} without aux_free_bias): for the log step. On CUDA
  // it copies the E biases to the host (a wait for the device).
  std::pair<double, double> bias_range() const;
  // Inference (core/nn/decode.cpp): y = shared(x) + the routed experts, routed as forward does
  // (biased selection, unbiased gates) but DROPLESS whatever capacity_factor says, so that a token's
  // output does not depend on the other tokens of the call (a KV-cache step sees one token, a rerun
  // the whole sequence). No stats, no balance losses, no bias update. x, y: [N, D].
  void decode(const Context& ctx, const Tensor& x, const Tensor& y) const;
  // Arena bytes one decode() of shape.tokens() rows allocates (core/nn/cost.h's rules).
  int64_t decode_bytes(const CostShape& shape) const;

  void set_dispatch(const ExpertDispatch* dispatch);  // nullptr = the built-in single-process one
  // true: the naive per-token expert loop (single process only), false: the grouped path (default).
  void set_naive(bool naive);

  // What it costs (core/nn/cost.h): the router (Phase::Router), K of the E experts per token
  // (Phase::ExpertGemm; dropless), the shared experts (Phase::DenseGemm), and what the single-process
  // path (the built-in dispatch, grouped or naive) allocates; an expert-parallel dispatch receives a
  // data-dependent number of rows that no config predicts.
  LayerCost cost(const CostShape& shape) const;

  Tensor e_score_correction_bias() const;  // [E]; undefined without aux_free_bias
  // [E]: where each routed expert's weights lie in the flat parameter buffer. Experts are declared
  // one after the other, so the ranges are contiguous (padding included) and in expert order:
  // expert parallelism reduces and gathers each rank's experts as one block.
  std::vector<FlatRange> expert_ranges() const;
  int64_t num_experts() const { return cfg_.n_routed_experts; }

 private:
  // Router: logits, scores, selection, gates, capacity (and saved.dropped).
  void route(const Context& ctx, const Tensor& x, Saved& saved) const;
  // The loads and the balance losses into saved.stats (allocated here).
  void statistics(const Context& ctx, Saved& saved) const;
  // meanwhile: work without a dispatch (the shared experts), run while the transfers are in flight.
  void experts_grouped(const Context& ctx, const Tensor& y, Saved& saved, const std::function<void()>& meanwhile) const;
  void experts_naive(const Context& ctx, const Tensor& y, Saved& saved) const;
  // Writes grad_x (routed part) and grad_topk_weights.
  void experts_grouped_backward(const Context& ctx, const Saved& saved, const Tensor& grad_y, const Tensor& grad_x,
                                const Tensor& grad_topk_weights, const std::function<void()>& meanwhile) const;
  void experts_naive_backward(const Context& ctx, const Saved& saved, const Tensor& grad_y, const Tensor& grad_x,
                              const Tensor& grad_topk_weights) const;
  // grad_x += the router's part: gates, balance losses, activation, W_gate (whose gradient it accumulates).
  void router_backward(const Context& ctx, const Saved& saved, const Tensor& grad_topk_weights,
                       double balance_grad_scale, const Tensor& grad_x) const;
  const ExpertDispatch& dispatch() const { return dispatch_ ? *dispatch_ : local_dispatch_; }

  ModelConfig cfg_;
  Linear gate_;                      // <prefix>.gate: [E, D]
  std::vector<SwiGLUMLP> experts_;   // [E]
  SwiGLUMLP shared_;                 // width n_shared_experts * F; unused when n_shared_experts = 0
  const ParamBuffer* buffers_ = nullptr;
  size_t bias_index_ = 0;            // in buffers_, when aux_free_bias
  const ExpertDispatch* dispatch_ = nullptr;
  LocalExpertDispatch local_dispatch_;
  bool naive_ = false;
};

}  // namespace moelab
