// One training step (train/step.h): micro-batches with gradient accumulation, the data-parallel
// reduction seam, the global norm and non-finite guard, clipping, AdamW and the aux-loss-free bias
// update. The order of every floating-point operation here is part of the bit-for-bit contract of
// a resumed run (train/trainer.h): change it and fixed-seed runs change.
#include "train/step.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/check.h"
#include "core/ops/grad_norm.h"
#include "core/ops/step_stats.h"
#include "core/profile.h"

namespace moelab {

void StepStats::read(const Model& model) {
  const StepStatsLayout layout = model.stats_layout();
  MOELAB_CHECK(device.defined() && device.numel() == layout.size(), "StepStats::read: no statistics of this model "
               "(run train_step first)");
  const Tensor host = device.to(Device::CPU);
  const double* acc = host.data<double>();
  losses = model.losses_of(acc, ranks);
  loads.assign(static_cast<size_t>(layout.moe_layers), {});
  last_moe.assign(static_cast<size_t>(layout.moe_layers), MoEStats{});
  const int64_t E = layout.experts, K = model.config().num_experts_per_tok;
  for (int64_t l = 0; l < layout.moe_layers; ++l) {
    loads[l].assign(acc + layout.load(l), acc + layout.load(l) + E);
    MoEStats& last = last_moe[l];
    last.load.assign(acc + layout.last_load(l), acc + layout.last_load(l) + E);
    last.max_vio = moe_max_vio(last.load, tokens, K);
  }
}

double StepStats::max_vio() const {
  double v = 0;
  for (const MoEStats& s : last_moe) v = std::max(v, s.max_vio);
  return v;
}

namespace {

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

void train_step(Model& model, AdamW& optimizer, const Context& ctx, const StepConfig& cfg,
                const NextTokens& next_tokens, StepStats& stats, GradSync* sync) {
  MOELAB_CHECK(cfg.grad_accum_steps >= 1, "train_step: grad_accum_steps = ", cfg.grad_accum_steps,
               " (expected >= 1)");
  MOELAB_CHECK(next_tokens != nullptr, "train_step: no next_tokens callback");
  const StepStatsLayout layout = model.stats_layout();
  const Device device = model.params().flat_grads().device();
  if (!stats.device.defined() || stats.device.numel() != layout.size() || stats.device.device() != device)
    stats.device = Tensor::empty({layout.size()}, DType::F64, device);  // once: reused by the next steps
  step_stats_reset(ctx, stats.device);
  stats.ranks = sync ? sync->ranks() : 1;
  stats.tokens = ctx.tokens();
  stats.dropped = 0;
  stats.losses = Model::Losses{};
  stats.loads.clear();
  stats.last_moe.clear();
  model.params().zero_grads();  // backward accumulates: the micro-batches add into zeros
  Context c = ctx;  // the layers see the processes sharing the batch (the batch-level balance loss)
  c.data_parallel = sync;
  const double scale = 1.0 / static_cast<double>(cfg.grad_accum_steps);
  for (int64_t micro = 0; micro < cfg.grad_accum_steps; ++micro) {
    const Tensor tokens = next_tokens();
    c.arena->reset();  // the previous micro-batch's activations are no longer needed
    Model::Saved saved;
    model.forward(c, tokens, saved);
    // The last micro-batch's backward tells the reduction which gradients are final.
    model.backward(c, saved, scale, micro + 1 == cfg.grad_accum_steps ? sync : nullptr);
    model.accumulate_stats(c, saved, scale, stats.device);
    stats.dropped += model.dropped(saved);
  }

  if (sync) {
    MOELAB_CHECK(optimizer.owned().size() == sync->owned().size(), "train_step: the optimizer owns ",
                 optimizer.owned().size(), " ranges but the data-parallel reduction gives it ", sync->owned().size());
    const PhaseScope phase(ctx.profiler, Phase::CommWait);
    sync->finish_grads(ctx);
    // Losses and loads summed over the ranks (the losses are divided by the ranks when read).
    sync->sum(ctx, stats.device.slice(layout.summed_begin(), layout.summed_end()));
  }

  const PhaseScope phase(ctx.profiler, Phase::Optimizer);
  // The verdict: one small copy (the host decides whether to update, and a bad target is an error).
  const Tensor verdict = stats.device.slice(0, StepStatsLayout::kVerdict).to(Device::CPU);
  const double* v = verdict.data<double>();
  const auto bad_head = static_cast<int64_t>(v[StepStatsLayout::kBadHead]) - 1;
  MOELAB_CHECK(bad_head < 0, "train_step: the targets of ", bad_head == 0 ? "the main head" : "MTP depth " +
               std::to_string(bad_head), " hold ", static_cast<int64_t>(v[StepStatsLayout::kBadTarget]), " at row ",
               static_cast<int64_t>(v[StepStatsLayout::kBadRow]), ", expected a class in [0, V=",
               model.config().vocab_size, ")");
  stats.losses.total = v[StepStatsLayout::kTotal] / stats.ranks;

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
  if (!stats.finite) return;
  optimizer.step(ctx, cfg.lr);
  if (sync) sync->gather_params(ctx);
  // After the optimizer (the bias is a buffer, not a parameter), with the step's global loads.
  const int64_t L = layout.moe_layers;
  model.update_bias(ctx, stats.device.slice(layout.load(0), layout.load(L)).reshape({L, layout.experts}));
}

}  // namespace moelab
