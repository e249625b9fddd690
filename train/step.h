// One training step (DESIGN.md, "The step and the execution context"), the same function for
// `moelab train`, `moelab bench` and the distributed trainer:
//   zero gradients
//   -> grad_accum_steps micro-batches: next tokens, arena reset, forward, backward of the loss scaled
//      by 1/grad_accum_steps (so the gradient is the mean over micro-batches), and the losses and
//      per-MoE-layer loads summed into StepStats with +=
//   -> with a GradSync (data parallel, core/nn/grad_sync.h; none on one process): the last
//      micro-batch's backward starts the gradient reduction bucket by bucket, finish_grads() waits
//      for it, and the step's losses (averaged) and loads (summed) are reduced over the ranks
//   -> global gradient norm and clipping (grad_clip > 0) -> non-finite guard -> AdamW at lr (on
//      the ranges this rank owns) -> gather_params() (ZeRO-1: the other ranks' updated ranges)
//   -> the aux-loss-free bias update with the step's summed (global) loads.
// A non-finite loss or norm skips the update and the bias change and comes back as finite = false
// (a non-finite norm also leaves the gradients unclipped); counting such steps and giving up is the
// caller's job.
// On the GPU the host waits for the device only at the points core/exec.h lists.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/nn/context.h"
#include "core/nn/grad_sync.h"
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
  Model::Losses losses;                    // sum of scale * losses: the mean over micro-batches (and ranks)
  std::vector<std::vector<double>> loads;  // [MoE layers][E]: expert selections summed over micro-batches
                                           // (and ranks)
  std::vector<MoEStats> last_moe;          // the last micro-batch's per-layer stats (MaxVio, bias range)
  int64_t dropped = 0;                     // expert assignments the capacity factor dropped, all MoE
                                           // layers and micro-batches (this rank's)
  double grad_norm = 0;                    // global L2 norm of the (reduced) gradients, before clipping
  bool finite = false;                     // loss and norm finite, so the update was applied

  // Adds one micro-batch. The loss sums are written `sum += l * scale` field by field in a fixed
  // order so that a run's losses are the same bits whatever calls the step.
  StepStats& operator+=(const MicroBatchStats& micro);
  double max_vio() const;                  // the largest MaxVio of the last micro-batch's MoE layers; 0 without
                                           // (this rank's micro-batch)
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

// Runs one step on `model` and `optimizer` in ctx (its arena is reset before every micro-batch;
// ctx.profiler, when set, gets the norm, clipping, optimizer and bias update as Phase::Optimizer).
// sync: the data-parallel reduction (null: one process); the optimizer must own sync->owned().
StepStats train_step(Model& model, AdamW& optimizer, const Context& ctx, const StepConfig& cfg,
                     const NextTokens& next_tokens, GradSync* sync = nullptr);

}  // namespace moelab
