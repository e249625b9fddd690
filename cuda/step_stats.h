// Launchers for the step's statistics (core/ops/step_stats.h has the layout and the arithmetic).
// One block: thread 0 does the scalar sums in the reference's order and in double, the block
// copies the loads; everything stays on the device (asynchronous).
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

constexpr int64_t kStepStatsMaxHeads = 16, kStepStatsMaxMoeLayers = 128;

struct StepStatsResetParams {
  double* acc = nullptr;  // device [size], zeroed
  int64_t size = 0;
  Stream stream = nullptr;
};

struct StepStatsAccumulateParams {
  const double* heads[kStepStatsMaxHeads] = {};     // device [4] each: cross-entropy stats
  const double* moe[kStepStatsMaxMoeLayers] = {};   // device [3 + experts] each: seq_aux, aux, z, load
  int64_t num_heads = 1, moe_layers = 0, experts = 0;
  double mtp_weight = 0.0, scale = 1.0;
  double* acc = nullptr;                            // device, core/ops/step_stats.h's layout, updated
  Stream stream = nullptr;
};

void step_stats_reset(const StepStatsResetParams& p);
void step_stats_accumulate(const StepStatsAccumulateParams& p);

}  // namespace moelab::cuda
