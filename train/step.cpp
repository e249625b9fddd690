// One training step (train/step.h): micro-batches with gradient accumulation, the data-parallel
// reduction seam, the global norm and non-finite guard, clipping, AdamW and the aux-loss-free bias
// update. The order of every floating-point operation here is part of the bit-for-bit contract of
// a resumed run (train/trainer.h): change it and fixed-seed runs change.
#include "train/step.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "core/ops/grad_norm.h"
#include "core/profile.h"

namespace moelab {

StepStats& StepStats::operator+=(const MicroBatchStats& micro) {
  const Model::Losses& l = micro.losses;
  const double scale = micro.scale;
  if (losses.mtp.size() < l.mtp.size()) losses.mtp.resize(l.mtp.size(), 0.0);
  losses.total += l.total * scale;
  losses.main += l.main * scale;
  for (size_t k = 0; k < l.mtp.size(); ++k) losses.mtp[k] += l.mtp[k] * scale;
  losses.seq_aux += l.seq_aux * scale;
  losses.aux += l.aux * scale;
  losses.z += l.z * scale;
  // Loads are counts, summed unscaled: the bias update compares each expert with the mean load.
  if (loads.empty()) loads.assign(micro.moe.size(), {});
  MOELAB_CHECK(loads.size() == micro.moe.size(), "StepStats: a micro-batch with ", micro.moe.size(),
               " MoE layers added to a step with ", loads.size());
  for (size_t i = 0; i < micro.moe.size(); ++i) {
    const std::vector<double>& load = micro.moe[i].load;
    loads[i].resize(load.size(), 0.0);
    for (size_t e = 0; e < load.size(); ++e) loads[i][e] += load[e];
  }
  last_moe = micro.moe;
  return *this;
}

double StepStats::max_vio() const {
  double v = 0;
  for (const MoEStats& s : last_moe) v = std::max(v, s.max_vio);
  return v;
}

StepStats train_step(Model& model, AdamW& optimizer, const Context& ctx, const StepConfig& cfg,
                     const NextTokens& next_tokens, const ReduceGrads& reduce_grads) {
  MOELAB_CHECK(cfg.grad_accum_steps >= 1, "train_step: grad_accum_steps = ", cfg.grad_accum_steps,
               " (expected >= 1)");
  MOELAB_CHECK(next_tokens != nullptr, "train_step: no next_tokens callback");
  StepStats stats;
  stats.losses.mtp.assign(static_cast<size_t>(model.config().num_nextn_predict_layers), 0.0);
  model.params().zero_grads();  // backward accumulates: the micro-batches add into zeros
  const double scale = 1.0 / static_cast<double>(cfg.grad_accum_steps);
  for (int64_t micro = 0; micro < cfg.grad_accum_steps; ++micro) {
    const Tensor tokens = next_tokens();
    ctx.arena->reset();  // the previous micro-batch's activations are no longer needed
    Model::Saved saved;
    const Model::Losses losses = model.forward(ctx, tokens, saved);
    model.backward(ctx, saved, scale);
    stats += MicroBatchStats{losses, scale, model.moe_stats(saved)};
  }

  if (reduce_grads) reduce_grads(model.params(), stats);

  const PhaseScope phase(ctx.profiler, Phase::Optimizer);
  const std::vector<Tensor> grads = {model.params().flat_grads()};
  // One pass for the norm: clipping computes it (and returns it from before the clip), so the
  // gradients are read once more only to be scaled, and only when the norm is above grad_clip.
  stats.grad_norm = cfg.grad_clip > 0 ? clip_grad_norm(ctx, grads, cfg.grad_clip) : grad_norm(ctx, grads);
  // Skip the update on a NaN/Inf loss or gradient: one bad batch must not destroy the weights (the
  // optimizer moments would carry the NaN forever); the caller decides when to give up. (A
  // non-finite norm leaves the gradients unclipped; they are zeroed by the next step.)
  stats.finite = std::isfinite(stats.losses.total) && std::isfinite(stats.grad_norm);
  if (!stats.finite) return stats;
  optimizer.step(ctx, cfg.lr);
  model.update_bias(ctx, stats.loads);  // after the optimizer: the bias is a buffer, not a parameter
  return stats;
}

}  // namespace moelab
