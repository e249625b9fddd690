// One training step (DESIGN.md, "The step and the execution context"), the same function for
// `moelab train`, `moelab bench` and the distributed trainer:
//   zero gradients
//   -> grad_accum_steps micro-batches: next tokens, arena reset, forward, backward of the loss scaled
//      by 1/grad_accum_steps (so the gradient is the mean over micro-batches), and the losses and
//      per-MoE-layer loads summed into StepStats with +=
//   -> reduce_grads: the data-parallel seam (see ReduceGrads; nothing on one process)
//   -> global gradient norm and clipping (grad_clip > 0) -> non-finite guard -> AdamW at lr
//   -> the aux-loss-free bias update with the step's summed loads.
// A non-finite loss or norm skips the update and the bias change and comes back as finite = false
// (a non-finite norm also leaves the gradients unclipped); counting such steps and giving up is the
// caller's job.
// On the GPU the host waits for the device only at the points core/exec.h lists.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/nn/context.h"
#include "core/nn/model.h"
#include "core/nn/moe.h"
#include "core/params.h"
#include "core/tensor.h"
#include "train/optimizer.h"

namespace moelab {

// What one micro-batch adds to its step: its losses, weighted by the accumulation scale (the
// 1/grad_accum_steps its backward used), and its MoE layers' statistics (Model::moe_stats).
struct MicroBatchStats {
  Model::Losses losses;
  double scale = 1.0;
  std::vector<MoEStats> moe;  // one per MoE layer, in Model::moe_layers() order
};

struct StepStats {
  Model::Losses losses;                    // sum of scale * losses: the mean over micro-batches
  std::vector<std::vector<double>> loads;  // [MoE layers][E]: expert selections summed over micro-batches
  std::vector<MoEStats> last_moe;          // the last micro-batch's per-layer stats (MaxVio, bias range)
  double grad_norm = 0;                    // global L2 norm of the (reduced) gradients, before clipping
  bool finite = false;                     // loss and norm finite, so the update was applied

  // Adds one micro-batch. The loss sums are written `sum += l * scale` field by field in a fixed
  // order so that a run's losses are the same bits whatever calls the step.
  StepStats& operator+=(const MicroBatchStats& micro);
  double max_vio() const;                  // the largest MaxVio of the last micro-batch's MoE layers; 0 without
  double balance_loss() const { return losses.seq_aux + losses.aux + losses.z; }
};

struct StepConfig {
  double lr = 0;                  // this step's learning rate (the caller's schedule)
  double grad_clip = 0;           // > 0: clip the global gradient norm to it; 0: no clipping
  int64_t grad_accum_steps = 1;   // micro-batches per step, each of ctx.batch sequences
};

// The next micro-batch's token windows, i32 [ctx.batch, T + 1 + D_mtp], already on the model's
// device (the trainer: rt.upload(loader.next()); the bench: tokens made outside its timed region).
using NextTokens = std::function<Tensor()>;

// The data-parallel seam: called exactly once per step, after the last micro-batch's backward and
// before the gradient norm, with the parameters (whose flat_grads() hold this rank's summed
// gradients) and the step's statistics so far (losses and loads of this rank's micro-batches).
// A data-parallel caller all-reduces the gradients to the mean over ranks (dist/, bucketed), and
// sums the loads (the bias update needs the GLOBAL load) and averages the losses, so that every
// rank takes the same norm, clipping, update and bias step. Empty (one process): nothing to do.
using ReduceGrads = std::function<void(ParamBuffer& params, StepStats& stats)>;

// Runs one step on `model` and `optimizer` in ctx (its arena is reset before every micro-batch;
// ctx.profiler, when set, gets the norm, clipping, optimizer and bias update as Phase::Optimizer).
StepStats train_step(Model& model, AdamW& optimizer, const Context& ctx, const StepConfig& cfg,
                     const NextTokens& next_tokens, const ReduceGrads& reduce_grads = {});

}  // namespace moelab
