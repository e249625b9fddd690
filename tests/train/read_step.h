// One training step whose statistics come back whole (train_step + StepStats::read), for the tests
// that compare steps: each call allocates its own device buffer and waits for the device.
#pragma once

#include "train/step.h"

namespace moelab::testing {

inline StepStats read_step(Model& model, AdamW& optimizer, const Context& ctx, const StepConfig& cfg,
                           const NextTokens& next_tokens, GradSync* sync = nullptr) {
  StepStats stats;
  train_step(model, optimizer, ctx, cfg, next_tokens, stats, sync);
  stats.read(model);
  return stats;
}

}  // namespace moelab::testing
