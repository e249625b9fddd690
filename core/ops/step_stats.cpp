// The step's statistics (step_stats.h): argument checks + dispatch, and the CPU reference (the
// specification the CUDA kernel follows operation for operation).
#include "core/ops/step_stats.h"

#include "core/ops/cross_entropy.h"
#include "core/ops/op_util.h"
#include "cuda/step_stats.h"

namespace moelab {

namespace ref {

void step_stats_accumulate(const StepStatsLayout& layout, const double* const* heads, const double* const* moe,
                           double mtp_weight, double scale, double* acc) {
  auto mean = [](const double* ce) {
    return ce[kCrossEntropyValid] > 0 ? ce[kCrossEntropyLossSum] / ce[kCrossEntropyValid] : 0.0;
  };
  const double main = mean(heads[0]);
  double total = main;
  for (int64_t k = 1; k < layout.heads; ++k) total += mtp_weight * mean(heads[k]);
  double seq_aux = 0, aux = 0, z = 0;
  for (int64_t l = 0; l < layout.moe_layers; ++l) {
    seq_aux += moe[l][kMoeStatSeqAux];
    aux += moe[l][kMoeStatAux];
    z += moe[l][kMoeStatZ];
  }
  total += seq_aux + aux + z;

  acc[StepStatsLayout::kTotal] += total * scale;
  acc[layout.main()] += main * scale;
  for (int64_t k = 1; k < layout.heads; ++k) acc[layout.mtp(k)] += mean(heads[k]) * scale;
  acc[layout.seq_aux()] += seq_aux * scale;
  acc[layout.aux()] += aux * scale;
  acc[layout.z()] += z * scale;
  for (int64_t l = 0; l < layout.moe_layers; ++l)
    for (int64_t e = 0; e < layout.experts; ++e) {
      const double count = moe[l][kMoeStats + e];
      acc[layout.load(l) + e] += count;
      acc[layout.last_load(l) + e] = count;
    }
  for (int64_t k = 0; k < layout.heads && acc[StepStatsLayout::kBadHead] == 0; ++k)
    if (heads[k][kCrossEntropyBadRow] >= 0) {
      acc[StepStatsLayout::kBadHead] = static_cast<double>(k + 1);
      acc[StepStatsLayout::kBadRow] = heads[k][kCrossEntropyBadRow];
      acc[StepStatsLayout::kBadTarget] = heads[k][kCrossEntropyBadTarget];
    }
}

}  // namespace ref

namespace {
static_assert(kStepStatsMaxHeads == cuda::kStepStatsMaxHeads && kStepStatsMaxMoeLayers == cuda::kStepStatsMaxMoeLayers,
              "the launch parameters hold the pointers");

void check_acc(const char* op, const Tensor& acc) {
  check_ndim(op, "acc", acc, 1, 1);
  check_dtype(op, "acc", acc, DType::F64);
}
}  // namespace

void step_stats_reset(const Exec& ex, const Tensor& acc) {
  check_acc("step_stats_reset", acc);
  if (acc.device() == Device::CUDA) {
    cuda::StepStatsResetParams p;
    p.acc = acc.data<double>();
    p.size = acc.numel();
    p.stream = ex.stream;
    cuda::step_stats_reset(p);
    return;
  }
  acc.zero();
}

void step_stats_accumulate(const Exec& ex, const StepStatsLayout& layout, const std::vector<Tensor>& heads,
                           const std::vector<Tensor>& moe, double mtp_weight, double scale, const Tensor& acc) {
  const char* op = "step_stats_accumulate";
  MOELAB_CHECK(layout.heads >= 1 && layout.heads <= kStepStatsMaxHeads && layout.moe_layers >= 0 &&
                   layout.moe_layers <= kStepStatsMaxMoeLayers && layout.experts >= 0 &&
                   (layout.moe_layers == 0 || layout.experts >= 1),
               op, ": layout of ", layout.heads, " heads, ", layout.moe_layers, " MoE layers of ", layout.experts,
               " experts; expected 1 to ", kStepStatsMaxHeads, " heads, 0 to ", kStepStatsMaxMoeLayers,
               " layers and at least one expert per layer");
  check_acc(op, acc);
  check_shape(op, "acc", acc, {layout.size()});
  MOELAB_CHECK(static_cast<int64_t>(heads.size()) == layout.heads, op, ": ", heads.size(), " heads' stats for a layout of ",
               layout.heads);
  MOELAB_CHECK(static_cast<int64_t>(moe.size()) == layout.moe_layers, op, ": ", moe.size(),
               " MoE layers' stats for a layout of ", layout.moe_layers);
  std::vector<const double*> h, m;
  for (const Tensor& t : heads) {
    check_shape(op, "a head's stats", t, {kCrossEntropyStats});
    check_dtype(op, "a head's stats", t, DType::F64);
    check_same_device(op, {{"acc", &acc}, {"a head's stats", &t}});
    h.push_back(t.data<double>());
  }
  for (const Tensor& t : moe) {
    check_shape(op, "a MoE layer's stats", t, {kMoeStats + layout.experts});
    check_dtype(op, "a MoE layer's stats", t, DType::F64);
    check_same_device(op, {{"acc", &acc}, {"a MoE layer's stats", &t}});
    m.push_back(t.data<double>());
  }
  if (acc.device() == Device::CUDA) {
    cuda::StepStatsAccumulateParams p;
    for (size_t k = 0; k < h.size(); ++k) p.heads[k] = h[k];
    for (size_t l = 0; l < m.size(); ++l) p.moe[l] = m[l];
    p.num_heads = layout.heads;
    p.moe_layers = layout.moe_layers;
    p.experts = layout.experts;
    p.mtp_weight = mtp_weight;
    p.scale = scale;
    p.acc = acc.data<double>();
    p.stream = ex.stream;
    cuda::step_stats_accumulate(p);
    return;
  }
  ref::step_stats_accumulate(layout, h.data(), m.data(), mtp_weight, scale, acc.data<double>());
}

}  // namespace moelab
