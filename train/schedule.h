// Learning-rate schedules (MODEL.md, "Training recipe"): a linear warm-up to lr over warmup_steps
// (step s < warmup_steps uses lr * (s + 1) / warmup_steps: the first update is not wasted at 0),
// then
//   cosine: lr -> lr * min_lr_ratio along a half cosine over the remaining steps;
//   wsd:    warmup-stable-decay: constant lr, then the last decay_fraction of all steps decays
//           along the same half cosine to lr * min_lr_ratio.
// step counts from 0 (the first optimizer step uses lr_at(0)).
#pragma once

#include <cstdint>

#include "train/run_config.h"

namespace moelab {

double lr_at(const TrainConfig& cfg, int64_t step);

}  // namespace moelab
