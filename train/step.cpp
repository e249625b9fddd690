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
    dropped += micro.moe[i].dropped;
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

namespace {

// The step's losses averaged and loads summed over the ranks: one small all-reduce, packed in a
// fixed order so that every rank unpacks the same numbers.
void reduce_stats(GradSync& sync, StepStats& stats) {
  Model::Losses& l = stats.losses;
  std::vector<double> v = {l.total, l.main, l.seq_aux, l.aux, l.z};
  v.insert(v.end(), l.mtp.begin(), l.mtp.end());
  for (const std::vector<double>& layer : stats.loads) v.insert(v.end(), layer.begin(), layer.end());
  sync.sum(v);
  const double n = sync.ranks();
  size_t i = 0;
  for (double* x : {&l.total, &l.main, &l.seq_aux, &l.aux, &l.z}) *x = v[i++] / n;
  for (double& x : l.mtp) x = v[i++] / n;
  for (std::vector<double>& layer : stats.loads)
    for (double& x : layer) x = v[i++];
}

// The global norm (and clipping) when each rank holds the reduced gradients of its own ranges only
// (ZeRO-1, expert parallelism): the ranks' sums of squares add up to the square of the global norm,
// each range's divided by the number of ranks that hold it (so that it counts once).
double sharded_norm(GradSync& sync, const Context& ctx, const ParamBuffer& params, double grad_clip) {
  std::vector<Tensor> mine;
  std::vector<double> sq = {0.0};
  const std::vector<OwnedRange>& owned = sync.owned();
  for (size_t i = 0; i < owned.size();) {  // runs of ranges with the same number of copies
    std::vector<Tensor> run;
    size_t j = i;
    for (; j < owned.size() && owned[j].copies == owned[i].copies; ++j)
      run.push_back(params.flat_grads().slice(owned[j].begin, owned[j].end));
    sq[0] += grad_sum_squares(ctx, run) / owned[i].copies;
    mine.insert(mine.end(), run.begin(), run.end());
    i = j;
  }
  sync.sum(sq);
  const double norm = std::sqrt(sq[0]);
  if (grad_clip > 0) clip_grads_to_norm(ctx, mine, norm, grad_clip);
  return norm;
}

bool whole_buffer(const std::vector<OwnedRange>& owned, const ParamBuffer& params) {
  return owned.size() == 1 && owned[0].begin == 0 && owned[0].end == params.numel_padded();
}

}  // namespace

StepStats train_step(Model& model, AdamW& optimizer, const Context& ctx, const StepConfig& cfg,
                     const NextTokens& next_tokens, GradSync* sync) {
  MOELAB_CHECK(cfg.grad_accum_steps >= 1, "train_step: grad_accum_steps = ", cfg.grad_accum_steps,
               " (expected >= 1)");
  MOELAB_CHECK(next_tokens != nullptr, "train_step: no next_tokens callback");
  StepStats stats;
  stats.losses.mtp.assign(static_cast<size_t>(model.config().num_nextn_predict_layers), 0.0);
  model.params().zero_grads();  // backward accumulates: the micro-batches add into zeros
  Context c = ctx;  // the layers see the processes sharing the batch (the batch-level balance loss)
  c.data_parallel = sync;
  const double scale = 1.0 / static_cast<double>(cfg.grad_accum_steps);
  for (int64_t micro = 0; micro < cfg.grad_accum_steps; ++micro) {
    const Tensor tokens = next_tokens();
    c.arena->reset();  // the previous micro-batch's activations are no longer needed
    Model::Saved saved;
    const Model::Losses losses = model.forward(c, tokens, saved);
    // The last micro-batch's backward tells the reduction which gradients are final.
    model.backward(c, saved, scale, micro + 1 == cfg.grad_accum_steps ? sync : nullptr);
    stats += MicroBatchStats{losses, scale, model.moe_stats(saved)};
  }

  if (sync) {
    MOELAB_CHECK(optimizer.owned().size() == sync->owned().size(), "train_step: the optimizer owns ",
                 optimizer.owned().size(), " ranges but the data-parallel reduction gives it ", sync->owned().size());
    const PhaseScope phase(ctx.profiler, Phase::CommWait);
    sync->finish_grads(ctx);
    reduce_stats(*sync, stats);
  }

  const PhaseScope phase(ctx.profiler, Phase::Optimizer);
  const std::vector<Tensor> grads = {model.params().flat_grads()};
  if (sync && !whole_buffer(sync->owned(), model.params())) {
    stats.grad_norm = sharded_norm(*sync, ctx, model.params(), cfg.grad_clip);
  } else {
    // One pass for the norm: clipping computes it (and returns it from before the clip), so the
    // gradients are read once more only to be scaled, and only when the norm is above grad_clip.
    stats.grad_norm = cfg.grad_clip > 0 ? clip_grad_norm(ctx, grads, cfg.grad_clip) : grad_norm(ctx, grads);
  }
  // Skip the update on a NaN/Inf loss or gradient: one bad batch must not destroy the weights (the
  // optimizer moments would carry the NaN forever); the caller decides when to give up. (A
  // non-finite norm leaves the gradients unclipped; they are zeroed by the next step.)
  stats.finite = std::isfinite(stats.losses.total) && std::isfinite(stats.grad_norm);
  if (!stats.finite) return stats;
  optimizer.step(ctx, cfg.lr);
  if (sync) sync->gather_params(ctx);
  model.update_bias(ctx, stats.loads);  // after the optimizer: the bias is a buffer, not a parameter
  return stats;
}

}  // namespace moelab
