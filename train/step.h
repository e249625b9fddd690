// One training step (DESIGN.md, "The step and the execution context"), the same function for
// `moelab train`, `moelab bench` and the distributed trainer:
//   zero gradients
//   -> grad_accum_steps micro-batches: next tokens, arena reset, forward, backward of the loss scaled
//      by 1/grad_accum_steps (so the gradient is the mean over micro-batches), and the losses and
//      per-MoE-layer loads added to the step's statistics on the device (Model::accumulate_stats)
//   -> with a GradSync (data parallel, core/nn/grad_sync.h; none on one process): the last
//      micro-batch's backward starts the gradient reduction bucket by bucket, finish_grads() waits
//      for it, and the step's statistics are summed over the ranks (on the device)
//   -> the verdict: the total loss and the first bad target to the host (a bad target throws)
//   -> global gradient norm and clipping (grad_clip > 0) -> non-finite guard -> AdamW at lr (on
//      the ranges this rank owns) -> gather_params() (ZeRO-1: the other ranks' updated ranges)
//   -> the aux-loss-free bias update with the step's summed (global) loads, on the device.
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

// A step's statistics. They accumulate on the model's device (`device`, the layout of
// core/ops/step_stats.h): each micro-batch's losses, loads and bad targets are added there by one
// small op, and train_step brings back only the verdict (the total loss and the first bad target:
// one small copy) plus the gradient norm. The rest comes to the host when read() is called: at the
// log step.
struct StepStats {
  Tensor device;         // f64 [Model::stats_layout().size()] on the model's device: allocated by the
                         // first train_step that gets this StepStats, reset and reused by the next ones
  int ranks = 1;         // processes whose statistics `device` sums (the losses are divided by it)
  int64_t tokens = 0;    // rows of one micro-batch (ctx.tokens()): MaxVio's mean load

  // Every step:
  double grad_norm = 0;  // global L2 norm of the (reduced) gradients, before clipping
  bool finite = false;   // loss and norm finite, so the update was applied
  int64_t dropped = 0;   // expert assignments the capacity factor dropped, all MoE layers and
                         // micro-batches (this rank's; a host number the drops return anyway)
  Model::Losses losses;  // every step: total (the mean over micro-batches and ranks); after read(): all

  // After read():
  std::vector<std::vector<double>> loads;  // [MoE layers][E]: selections summed over micro-batches and ranks
  std::vector<MoEStats> last_moe;          // the last micro-batch's per-layer loads and MaxVio (this rank's)

  // Brings the statistics to the host (on CUDA one copy that waits for the device).
  void read(const Model& model);
  double max_vio() const;  // the largest MaxVio of last_moe; 0 without MoE layers
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
// ctx.profiler, when set, gets the norm, clipping, optimizer and bias update as Phase::Optimizer),
// its statistics into `stats` (pass the same StepStats every step: its device buffer is reused).
// sync: the data-parallel reduction (null: one process); the optimizer must own sync->owned().
// A bad target (a class outside [0, V)) throws, naming the head, the row and the value.
void train_step(Model& model, AdamW& optimizer, const Context& ctx, const StepConfig& cfg,
                const NextTokens& next_tokens, StepStats& stats, GradSync* sync = nullptr);

}  // namespace moelab
