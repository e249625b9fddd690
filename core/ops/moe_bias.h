// The auxiliary-loss-free bias update (MODEL.md, "Load balancing"; DeepSeek-V3), run once after
// each optimizer step:
//   mean = (1/E) sum_j load_j;   b_i += speed * sign(mean - load_i),   sign(0) = 0
// so an under-loaded expert (load < mean) gains `speed`, an over-loaded one loses it and an
// expert exactly at the mean keeps its bias. `load_i` is the number of tokens routed to expert i in
// the whole global batch (summed over micro-batches and data-parallel ranks by the caller).
//
// Shapes: load: [E] (E >= 1)   bias: [E] (e_score_correction_bias, updated in place)
// Contract: bias is UPDATED IN PLACE (+=); load is only read.
// Dtypes: load f64 (counts, as the step accumulates them: core/ops/step_stats.h); bias f32 (training) or f64 (gradient-check models)
//         on the CPU, f32 on CUDA.
// Rounding, identical on both devices: the mean is summed in double, in index order, then divided
// by E; the comparisons are in double; the step is speed rounded to the bias's dtype times the
// sign, added in that dtype (as an in-place add of torch would do it).
// Checks: the CPU path checks that every load is finite and >= 0 (naming the first bad one). On
// CUDA the loads are not read on the host (no device-to-host copy): a NaN load compares false both
// ways and moves nothing (moe_count_tokens writes NaN counts for indices out of range).
#pragma once

#include <cstdint>

#include "core/exec.h"
#include "core/tensor.h"

namespace moelab {

void moe_bias_update(const Exec& ex, const Tensor& load, double speed, const Tensor& bias);

// The reference trusts its arguments (the Tensor API above checks them).
namespace ref {
template <typename T>
void moe_bias_update(const double* load, double speed, T* bias, int64_t E);
}  // namespace ref

}  // namespace moelab
