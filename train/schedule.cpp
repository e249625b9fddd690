#include "train/schedule.h"

#include <algorithm>
#include <cmath>

namespace moelab {

double lr_at(const TrainConfig& cfg, int64_t step) {
  const double peak = cfg.lr, low = cfg.lr * cfg.min_lr_ratio;
  if (step < cfg.warmup_steps) return peak * static_cast<double>(step + 1) / static_cast<double>(cfg.warmup_steps);
  // The decaying stretch [decay_start, steps): all of the post-warm-up steps for cosine, the last
  // decay_fraction of the run for wsd.
  const double decay_start = cfg.schedule == "wsd"
                                 ? std::max<double>(static_cast<double>(cfg.warmup_steps),
                                                    static_cast<double>(cfg.steps) * (1.0 - cfg.decay_fraction))
                                 : static_cast<double>(cfg.warmup_steps);
  const double span = static_cast<double>(cfg.steps) - decay_start;
  if (static_cast<double>(step) < decay_start || span <= 0) return peak;
  const double progress = std::min(1.0, (static_cast<double>(step) - decay_start) / span);
  constexpr double kPi = 3.14159265358979323846;
  return low + (peak - low) * 0.5 * (1.0 + std::cos(kPi * progress));
}

}  // namespace moelab
