// `moelab train`: the training loop on the CPU or one GPU (train.device, train.precision:
// train/runtime.h), or on N processes started by mpirun (train/parallel.h: data parallel, with
// ZeRO-1 and expert parallelism as the [dist] keys say), wiring model, data, optimizer and
// checkpoints.
// Each optimizer step is train/step.h's train_step (the one `moelab bench` times): grad_accum_steps
// micro-batches (forward + backward with the loss scaled by 1/grad_accum_steps), a non-finite guard
// (a NaN/Inf loss or gradient norm skips the update; the trainer logs it, and max_nonfinite in a row
// stop the run with an error), global-norm clipping, AdamW at the scheduled learning rate, then the
// aux-loss-free bias update with the step's summed expert loads.
// Validation every eval_every steps over the whole val split (every full batch of its windows, in
// file order; train.eval_batches > 0 takes only the first that many batches), the same windows
// every time, so the curve is comparable. Checkpoints every ckpt_every steps, at the end,
// and when stop is requested (SIGINT/SIGTERM through `stop`): the current step finishes first.
// Same seed, same thread count, same number of processes -> the same run, bit for bit, including
// across a resume; another number of processes gives the same run within f32 rounding.
#pragma once

#include <atomic>
#include <string>

#include "train/run_config.h"

namespace moelab {

struct TrainOptions {
  // What out_dir may hold (train/checkpoint.h, prepare_run_dir): resume continues from its newest
  // checkpoint (one must exist, unless resume_if_present); overwrite removes an old run first;
  // neither: it must hold no run.
  bool resume = false;
  bool resume_if_present = false;
  bool overwrite = false;
  bool console = true;                        // print lines and the progress bar
  const std::atomic<bool>* stop = nullptr;    // set by a signal handler: save and return after the step
  int64_t stop_after_step = 0;                // > 0: behave as if stopped after this step (tests)
};

struct TrainResult {
  int64_t step = 0;                           // optimizer steps completed
  double train_loss = 0;                      // last step's total loss (main + MTP)
  double train_loss_main = 0;                 // last step's main-model loss
  double val_loss = 0;                        // last validation (main loss); NaN when none ran
  double seconds = 0;                         // training time of this process
  double tokens_per_second = 0;
  std::string checkpoint;                     // the last checkpoint written
  bool stopped = false;                       // by a signal (or stop_after_step)
};

TrainResult train(const RunConfig& cfg, const TrainOptions& options);

// `moelab eval`: a checkpoint's mean main-model loss over the validation windows the trainer's
// evaluation uses (the whole val split, or its first eval_batches batches), on any device.
struct EvalOptions {
  std::string device = "cpu", precision = "auto";  // train/runtime.h
  int64_t batches = -1;                            // >= 0: instead of the run's train.eval_batches (0: all)
  std::string data_dir;                            // non-empty: instead of the run's train.data_dir
  std::string dump_logits;                         // non-empty: write the first val batch's logits here
};
struct EvalResult {
  std::string checkpoint, runtime;
  int64_t step = 0;
  double loss = 0;
  int64_t windows = 0, split_windows = 0;  // the windows evaluated, of the val split's
  double seconds = 0;
};
// The validation loss of a checkpoint. With dump_logits, also writes the first val batch as a
// safetensors file for comparisons with other implementations (HF transformers, DeepSeek's code):
//   tokens         i32 [B, W]     the loader's windows, W = T + 1 + D_mtp
//   logits         f32 [B, T, V]  logits[b, t] predicts tokens[b, t + 1] from tokens[b, 0..t]
//   mtp.<k>.logits f32 [B, T, V]  MTP depth k (1..D_mtp) predicts tokens[b, t + k + 1]
//   loss.main      f64 []         that batch's mean cross-entropy, loss.mtp.<k> each depth's
// with the checkpoint and its step in the metadata.
EvalResult evaluate_checkpoint(const std::string& ckpt_or_run_dir, const EvalOptions& options);

}  // namespace moelab
