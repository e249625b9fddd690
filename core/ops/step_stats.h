// The statistics of a training step, accumulated where the model runs: on the GPU nothing comes
// back to the host until someone reads them (the step's verdict, the log step). Each micro-batch
// leaves raw statistics on the device:
//   heads  H = 1 + D_mtp cross-entropy stats, f64 [kCrossEntropyStats] (core/ops/cross_entropy.h),
//          the main head first, then MTP depth 1..D
//   moe    per MoE layer (Model::moe_layers() order) f64 [kMoeStats + E]: the balance losses with
//          their coefficients {seq_aux, aux, z}, then the selections per expert load[E]
// and step_stats_accumulate adds them, in double, to the step's accumulator acc (f64, the layout
// below):
//   mean_k  = loss_sum_k / n_valid_k                  (0 when no row is valid)
//   seq_aux = sum over layers of seq_aux_l, in layer order (aux and z alike)
//   total   = mean_0, then + mtp_weight * mean_k for k = 1..D, then + ((seq_aux + aux) + z)
//   acc[total] += total * scale, acc[main] += mean_0 * scale, acc[mtp k] += mean_k * scale,
//   acc[seq_aux] += seq_aux * scale (aux, z alike)    (scale: the micro-batch's 1 / grad_accum_steps)
//   acc[load l, e] += load_l[e] (counts: unscaled),   acc[last load l, e] = load_l[e]
//   the first head of the step whose stats name a bad target: its index + 1, row and target.
// The operations and their order are the ones the host used to do on returned doubles, so a CPU
// run gives the same bits as before the statistics moved to the device.
// acc's layout (StepStatsLayout), f64:
//   [0] bad head + 1 (0: none)  [1] its bad row  [2] that target      the verdict reads [0, 4)
//   [3] total  [4] main  [5, 5 + D) mtp  then seq_aux, aux, z, load [L][E]
//                                                 -- summed() range: a data-parallel step sums it
//                                                    over the ranks (the losses then / ranks)
//   last_load [L][E]                              the last micro-batch's (MaxVio at the log step)
// Contract: step_stats_reset OVERWRITES acc with zeros; step_stats_accumulate UPDATES acc.
// CUDA: one block, asynchronous; at most kStepStatsMaxHeads heads and kStepStatsMaxMoeLayers
// layers (their pointers travel in the launch's parameters).
#pragma once

#include <cstdint>
#include <vector>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

// The entries of a MoE layer's raw statistics (MoE::Saved::stats).
constexpr int64_t kMoeStatSeqAux = 0, kMoeStatAux = 1, kMoeStatZ = 2, kMoeStats = 3;

constexpr int64_t kStepStatsMaxHeads = 16, kStepStatsMaxMoeLayers = 128;

struct StepStatsLayout {
  int64_t heads = 1;       // H = 1 + D_mtp
  int64_t moe_layers = 0;  // L
  int64_t experts = 0;     // E (0 without MoE layers)

  static constexpr int64_t kBadHead = 0, kBadRow = 1, kBadTarget = 2, kTotal = 3, kVerdict = 4;
  int64_t main() const { return 4; }
  int64_t mtp(int64_t k) const { return 4 + k; }  // k = 1..D
  int64_t seq_aux() const { return 4 + heads; }
  int64_t aux() const { return seq_aux() + 1; }
  int64_t z() const { return seq_aux() + 2; }
  int64_t load(int64_t layer) const { return seq_aux() + 3 + layer * experts; }
  int64_t last_load(int64_t layer) const { return load(moe_layers) + layer * experts; }
  int64_t summed_begin() const { return kTotal; }
  int64_t summed_end() const { return load(moe_layers); }
  int64_t size() const { return last_load(moe_layers); }
};

void step_stats_reset(const Exec& ex, const Tensor& acc);
void step_stats_accumulate(const Exec& ex, const StepStatsLayout& layout, const std::vector<Tensor>& heads,
                           const std::vector<Tensor>& moe, double mtp_weight, double scale, const Tensor& acc);

namespace ref {
// heads[k]: [kCrossEntropyStats], moe[l]: [kMoeStats + E], acc: [layout.size()].
void step_stats_accumulate(const StepStatsLayout& layout, const double* const* heads, const double* const* moe,
                           double mtp_weight, double scale, double* acc);
}  // namespace ref

}  // namespace moelab
