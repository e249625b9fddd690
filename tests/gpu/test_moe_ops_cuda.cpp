// The MoE ops on the GPU against their CPU references (core/ops/moe_route.h, topk.h,
// moe_dispatch.h, moe_balance.h, moe_bias.h): routing decisions (top-k, groups, capacity drops,
// layouts, counts) and the aux-loss-free bias update must equal the CPU's exactly, ties (and a
// load exactly at the mean) and NaNs included; gates, dispatch/combine and the
// balance losses follow tests/README.md's tolerances (f32 tight, bf16 activations atol 2e-2 rtol
// 1.6e-2). Guard rows around every output catch stray writes; determinism tests run each op twice.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
#include <vector>

#include "core/ops/moe_balance.h"
#include "core/ops/moe_bias.h"
#include "core/ops/moe_dispatch.h"
#include "core/ops/moe_route.h"
#include "core/ops/topk.h"
#include "tests/gpu/gpu_harness.h"

namespace moelab {
namespace {

using testing::Guarded;
using testing::rand_uniform;
using testing::randint;
using testing::i32_tensor;
using testing::randn;
using testing::to_gpu;
using testing::to_host;

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---- helpers ----------------------------------------------------------------------------------

// Element by element: equal bits, or both NaN (f32 compared as f32, f64 as f64, i32 as i32). Reports the
// first difference and how many there are.
::testing::AssertionResult identical(const Tensor& actual_in, const Tensor& expected_in) {
  const Tensor a = to_host(actual_in), e = to_host(expected_in);
  if (a.numel() != e.numel() || a.dtype() != e.dtype())
    return ::testing::AssertionFailure() << "different tensors: " << a.str() << " vs " << e.str();
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < a.numel(); ++i) {
    bool same;
    if (a.dtype() == DType::I32) {
      same = a.data<int32_t>()[i] == e.data<int32_t>()[i];
    } else if (a.dtype() == DType::F64) {
      const double x = a.data<double>()[i], y = e.data<double>()[i];
      same = (std::isnan(x) && std::isnan(y)) || std::memcmp(&x, &y, sizeof(double)) == 0;
    } else {
      const float x = a.data<float>()[i], y = e.data<float>()[i];
      same = (std::isnan(x) && std::isnan(y)) || std::memcmp(&x, &y, sizeof(float)) == 0;
    }
    if (!same && first < 0) first = i;
    bad += !same;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os << bad << " of " << a.numel() << " elements differ, first at flat index " << first << ": actual ";
  if (a.dtype() == DType::I32) os << a.data<int32_t>()[first] << ", expected " << e.data<int32_t>()[first];
  else if (a.dtype() == DType::F64) os << a.data<double>()[first] << ", expected " << e.data<double>()[first];
  else os << a.data<float>()[first] << ", expected " << e.data<float>()[first];
  return ::testing::AssertionFailure() << os.str();
}

// The balance losses read back from the f64 the forwards write, on the input's device.
double aux_loss(const Tensor& scores, const Tensor& idx, int64_t seq_len, double alpha,
                const std::vector<double>& fractions = {}) {
  const Tensor out = Tensor::empty({1}, DType::F64, scores.device());
  moe_aux_loss_forward(testing::gpu_exec(), scores, idx, seq_len, alpha, out, fractions);
  return to_host(out).data<double>()[0];
}
double z_loss(const Tensor& logits, double coef) {
  const Tensor out = Tensor::empty({1}, DType::F64, logits.device());
  moe_z_loss_forward(testing::gpu_exec(), logits, coef, out);
  return to_host(out).data<double>()[0];
}

// Max |t| (CPU f32), for tolerances relative to the size of a result.
double max_abs(const Tensor& t) {
  double m = 0;
  for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, static_cast<double>(std::fabs(t.data<float>()[i])));
  return m;
}

enum class Scores { Sigmoid, Softmax, Ties, NaN };

const char* scores_name(Scores kind) {
  switch (kind) {
    case Scores::Sigmoid: return "sigmoid";
    case Scores::Softmax: return "softmax";
    case Scores::Ties: return "ties";
    case Scores::NaN: return "nan";
  }
  return "?";
}

// Router scores [N, E] (CPU f32): sigmoid-like values in (0, 1) (distinct in practice), softmax
// rows of N(0, 1) logits, values on 4 levels (many exact ties) or sigmoid-like with ~3% NaNs.
Tensor make_scores(int64_t N, int64_t E, Scores kind, uint64_t seed) {
  Tensor s = rand_uniform({N, E}, DType::F32, seed, 0.0f, 1.0f);
  float* p = s.data<float>();
  if (kind == Scores::Softmax) {
    const Tensor l = randn({N, E}, DType::F32, seed + 1);
    for (int64_t n = 0; n < N; ++n) {
      const float* ln = l.data<float>() + n * E;
      float m = ln[0], sum = 0;
      for (int64_t e = 1; e < E; ++e) m = std::max(m, ln[e]);
      for (int64_t e = 0; e < E; ++e) sum += std::exp(ln[e] - m);
      for (int64_t e = 0; e < E; ++e) p[n * E + e] = std::exp(ln[e] - m) / sum;
    }
  } else if (kind == Scores::Ties) {
    for (int64_t i = 0; i < s.numel(); ++i) p[i] = std::floor(p[i] * 4.0f) / 4.0f;
  } else if (kind == Scores::NaN) {
    const Tensor u = rand_uniform({N, E}, DType::F32, seed + 2, 0.0f, 1.0f);
    for (int64_t i = 0; i < s.numel(); ++i)
      if (u.data<float>()[i] < 0.03f) p[i] = kNaN;
  }
  return s;
}

// The aux-free bias [E]: small values, or (with tied scores) multiples of 1/8 so that s + b stays
// exact and the ties survive.
Tensor make_bias(int64_t E, Scores kind, uint64_t seed) {
  Tensor b = randn({E}, DType::F32, seed, 0.05);
  if (kind == Scores::Ties) {
    const Tensor levels = randint({E}, 3, seed);
    for (int64_t e = 0; e < E; ++e) b.data<float>()[e] = static_cast<float>(levels.data<int32_t>()[e]) / 8.0f;
  }
  return b;
}

// ---- routing: top-k with groups and bias, gates --------------------------------------------------

struct RouteCase {
  int64_t N, E, K, n_group, topk_group;
  bool bias;
  Scores kind;
  // The best scores a group's score sums; 0 = Hugging Face's rule. Node-limited routing is
  // n_group = nodes, topk_group = M, group_topk = ceil(K / M).
  int64_t group_topk = 0;
};

std::string route_name(const ::testing::TestParamInfo<RouteCase>& info) {
  const RouteCase& c = info.param;
  return "N" + std::to_string(c.N) + "_E" + std::to_string(c.E) + "_K" + std::to_string(c.K) + "_G" +
         std::to_string(c.n_group) + "M" + std::to_string(c.topk_group) +
         (c.group_topk > 0 ? "S" + std::to_string(c.group_topk) : std::string()) + (c.bias ? "_bias_" : "_nobias_") +
         scores_name(c.kind);
}

class MoeRouteCuda : public testing::GpuTest, public ::testing::WithParamInterface<RouteCase> {};

TEST_P(MoeRouteCuda, TopkAndGatesMatchCpu) {
  const RouteCase c = GetParam();
  const Tensor scores = make_scores(c.N, c.E, c.kind, 100 + c.N + c.E);
  const Tensor bias = c.bias ? make_bias(c.E, c.kind, 7 + c.E) : Tensor();
  Tensor idx_ref = Tensor::empty({c.N, c.K}, DType::I32);
  moe_route_topk(testing::gpu_exec(), scores, bias, c.n_group, c.topk_group, c.group_topk, idx_ref);

  const Tensor gscores = to_gpu(scores, DType::F32);
  const Tensor gbias = c.bias ? to_gpu(bias, DType::F32) : Tensor();
  Guarded gidx({c.N, c.K}, DType::I32);
  moe_route_topk(testing::gpu_exec(), gscores, gbias, c.n_group, c.topk_group, c.group_topk, gidx.view);
  EXPECT_TRUE(identical(gidx.view, idx_ref)) << "topk_idx";
  EXPECT_TRUE(gidx.guards_intact()) << "write outside topk_idx";
  if (c.kind == Scores::NaN) return;  // the gates of NaN scores are NaN: nothing more to compare

  const Tensor grad_w = randn({c.N, c.K}, DType::F32, 55);
  const Tensor ggrad_w = to_gpu(grad_w, DType::F32);
  for (const bool norm : {false, true}) {
    const double scale = norm ? 2.5 : 1.0;
    Tensor w_ref = Tensor::empty({c.N, c.K}, DType::F32), gs_ref = Tensor::empty({c.N, c.E}, DType::F32);
    moe_gate_forward(testing::gpu_exec(), scores, idx_ref, norm, scale, w_ref);
    moe_gate_backward(testing::gpu_exec(), grad_w, scores, idx_ref, norm, scale, gs_ref);

    Guarded gw({c.N, c.K}, DType::F32), ggs({c.N, c.E}, DType::F32);  // start as guard values everywhere
    moe_gate_forward(testing::gpu_exec(), gscores, gidx.view, norm, scale, gw.view);
    moe_gate_backward(testing::gpu_exec(), ggrad_w, gscores, gidx.view, norm, scale, ggs.view);
    EXPECT_TRUE(testing::close(gw.view, w_ref, 1e-6, 1e-6)) << "topk_weights, norm " << norm;
    EXPECT_TRUE(testing::close(ggs.view, gs_ref, 1e-6 * max_abs(gs_ref), 1e-5)) << "grad_scores, norm " << norm;
    EXPECT_TRUE(gw.guards_intact() && ggs.guards_intact()) << "write outside the gate outputs, norm " << norm;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, MoeRouteCuda,
    ::testing::Values(RouteCase{1, 7, 1, 1, 1, false, Scores::Sigmoid}, RouteCase{1, 7, 3, 1, 1, true, Scores::Sigmoid},
                      RouteCase{333, 7, 1, 1, 1, true, Scores::Sigmoid},
                      RouteCase{333, 7, 7, 1, 1, true, Scores::Sigmoid},      // K = E
                      RouteCase{333, 256, 8, 8, 4, true, Scores::Sigmoid},    // DeepSeek-V3's routing
                      RouteCase{333, 256, 8, 8, 4, false, Scores::Softmax},   // groups scored by their max
                      RouteCase{333, 64, 6, 8, 3, false, Scores::Softmax}, RouteCase{65, 16, 8, 4, 2, true, Scores::Sigmoid},
                      RouteCase{33, 60, 4, 6, 2, true, Scores::Sigmoid},      // groups of 10
                      RouteCase{100, 16, 2, 16, 4, false, Scores::Sigmoid},   // one expert per group
                      RouteCase{129, 128, 8, 64, 8, true, Scores::Sigmoid},   // more groups than a warp's lanes
                      RouteCase{333, 64, 8, 1, 1, true, Scores::Ties}, RouteCase{333, 64, 8, 8, 3, true, Scores::Ties},
                      RouteCase{333, 32, 4, 4, 2, false, Scores::Ties}, RouteCase{200, 64, 8, 1, 1, false, Scores::NaN},
                      RouteCase{200, 64, 8, 8, 4, true, Scores::NaN}, RouteCase{3, 1000, 8, 1, 1, true, Scores::Sigmoid},
                      // Node-limited routing: nodes as groups, a node scores its top ceil(K / M).
                      RouteCase{333, 64, 8, 8, 4, true, Scores::Sigmoid, 2},    // ceil(8/4) = 2: HF's V3 rule
                      RouteCase{333, 64, 8, 8, 2, true, Scores::Sigmoid, 4},    // ceil(8/2) = 4
                      RouteCase{333, 64, 6, 16, 4, false, Scores::Softmax, 2},  // no bias, still a top-2 sum
                      RouteCase{333, 64, 8, 8, 3, true, Scores::Ties, 3},       // tied experts and tied nodes
                      RouteCase{200, 64, 8, 8, 3, true, Scores::NaN, 3},
                      RouteCase{129, 256, 8, 64, 3, true, Scores::Sigmoid, 3},  // more nodes than a warp's lanes
                      RouteCase{100, 60, 5, 6, 2, true, Scores::Ties, 3},       // nodes of 10 experts
                      RouteCase{65, 16, 4, 16, 4, true, Scores::Sigmoid, 1},    // nodes of one expert, with a bias
                      RouteCase{33, 32, 8, 4, 1, true, Scores::Sigmoid, 8}),    // M = 1: a node scores its top 8
    route_name);

// ---- capacity drops and token counts ------------------------------------------------------------

struct CapacityCase {
  int64_t N, E, K;
  double capacity_factor;  // 0: capacity 0 (everything dropped)
  Scores kind;
};

class MoeCapacityCuda : public testing::GpuTest, public ::testing::WithParamInterface<CapacityCase> {};

TEST_P(MoeCapacityCuda, KeptSetAndCountsMatchCpu) {
  const CapacityCase c = GetParam();
  const Tensor scores = make_scores(c.N, c.E, c.kind, 300 + c.N);
  Tensor idx = Tensor::empty({c.N, c.K}, DType::I32);
  // The bias makes the loads uneven.
  moe_route_topk(testing::gpu_exec(), scores, make_bias(c.E, c.kind, 9), 1, 1, 0, idx);
  const int64_t capacity = c.capacity_factor > 0 ? moe_capacity(c.capacity_factor, c.N, c.K, c.E) : 0;
  Tensor kept_ref = Tensor::empty({c.N, c.K}, DType::I32);
  const int64_t dropped_ref = moe_capacity_drop(testing::gpu_exec(), scores, idx, capacity, kept_ref);
  if (c.capacity_factor < 1) {
    EXPECT_GT(dropped_ref, 0) << "the case must drop something";
  }

  const Tensor gidx = idx.to(Device::CUDA);
  Guarded gkept({c.N, c.K}, DType::I32);
  const int64_t dropped =
      moe_capacity_drop(testing::gpu_exec(), to_gpu(scores, DType::F32), gidx, capacity, gkept.view);
  EXPECT_EQ(dropped, dropped_ref);
  EXPECT_TRUE(identical(gkept.view, kept_ref)) << "kept_idx, capacity " << capacity;
  EXPECT_TRUE(gkept.guards_intact()) << "write outside kept_idx";

  // The counts on the device (f64) equal the CPU's, before the drops and with -1 entries.
  auto counts = [&](const Tensor& topk_idx) {
    const Tensor out = Tensor::empty({c.E}, DType::F64, topk_idx.device());
    moe_count_tokens(testing::gpu_exec(), topk_idx, out);
    return out;
  };
  EXPECT_TRUE(identical(counts(gidx), counts(idx))) << "counts before the drops";
  EXPECT_TRUE(identical(counts(gkept.view), counts(kept_ref))) << "counts with -1 entries";
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeCapacityCuda,
                         ::testing::Values(CapacityCase{1, 7, 1, 1.0, Scores::Sigmoid},
                                           CapacityCase{333, 7, 3, 0.5, Scores::Sigmoid},
                                           CapacityCase{333, 7, 3, 1.25, Scores::Sigmoid},
                                           CapacityCase{333, 64, 8, 0.3, Scores::Sigmoid},
                                           CapacityCase{333, 64, 8, 0.3, Scores::Ties},  // tie: lower token kept
                                           CapacityCase{333, 16, 4, 0.5, Scores::NaN},   // NaN ranks highest
                                           CapacityCase{2000, 256, 8, 0.7, Scores::Sigmoid},
                                           CapacityCase{50, 8, 2, 0.0, Scores::Sigmoid}),  // capacity 0
                         [](const auto& info) { return "case" + std::to_string(info.index); });

// ---- top-k -----------------------------------------------------------------------------------

struct TopkCase {
  int64_t N, E, K;
  Scores kind;  // Sigmoid: N(0,1) values here; Ties / NaN as for the scores
};

class TopkCuda : public testing::GpuTest, public ::testing::WithParamInterface<TopkCase> {};

TEST_P(TopkCuda, MatchesCpuExactly) {
  const TopkCase c = GetParam();
  Tensor x = c.kind == Scores::Sigmoid ? randn({c.N, c.E}, DType::F32, 40 + c.E) : make_scores(c.N, c.E, c.kind, 41);
  if (c.kind == Scores::Ties && c.E > 1) {  // +0 and -0 are equal: the lower index first
    x.data<float>()[0] = 0.0f;
    x.data<float>()[1] = -0.0f;
  }
  Tensor values_ref = Tensor::empty({c.N, c.K}, DType::F32), idx_ref = Tensor::empty({c.N, c.K}, DType::I32);
  topk_forward(testing::gpu_exec(), x, c.K, values_ref, idx_ref);
  Guarded values({c.N, c.K}, DType::F32), idx({c.N, c.K}, DType::I32);
  topk_forward(testing::gpu_exec(), to_gpu(x, DType::F32), c.K, values.view, idx.view);
  EXPECT_TRUE(identical(idx.view, idx_ref)) << "indices";
  EXPECT_TRUE(identical(values.view, values_ref)) << "values";
  EXPECT_TRUE(values.guards_intact() && idx.guards_intact()) << "write outside the outputs";

  // Backward with the forward's indices, then with random ones (repeats are summed in j order).
  const Tensor gv = randn({c.N, c.K}, DType::F32, 42);
  for (const Tensor& ind : {idx_ref, randint({c.N, c.K}, static_cast<int32_t>(c.E), 43)}) {
    Tensor gx_ref = Tensor::empty({c.N, c.E}, DType::F32);
    topk_backward(testing::gpu_exec(), gv, ind, gx_ref);
    Guarded gx({c.N, c.E}, DType::F32);
    topk_backward(testing::gpu_exec(), to_gpu(gv, DType::F32), ind.to(Device::CUDA), gx.view);
    EXPECT_TRUE(identical(gx.view, gx_ref)) << "grad_x";
    EXPECT_TRUE(gx.guards_intact()) << "write outside grad_x";
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, TopkCuda,
                         ::testing::Values(TopkCase{1, 1, 1, Scores::Sigmoid}, TopkCase{3, 7, 3, Scores::Sigmoid},
                                           TopkCase{333, 256, 8, Scores::Sigmoid}, TopkCase{65, 33, 33, Scores::Sigmoid},
                                           TopkCase{4, 1000, 50, Scores::Sigmoid}, TopkCase{333, 64, 8, Scores::Ties},
                                           TopkCase{100, 40, 10, Scores::NaN}),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

// ---- dispatch layout --------------------------------------------------------------------------

// topk_idx [N, K] with entries in [0, E) and about a fifth of them -1 (not sent).
Tensor random_assignments(int64_t N, int64_t E, int64_t K, uint64_t seed) {
  Tensor idx = randint({N, K}, static_cast<int32_t>(E), seed);
  const Tensor u = rand_uniform({N, K}, DType::F32, seed + 1, 0.0f, 1.0f);
  for (int64_t i = 0; i < idx.numel(); ++i)
    if (u.data<float>()[i] < 0.2f) idx.data<int32_t>()[i] = -1;
  return idx;
}

struct LayoutCase {
  int64_t N, E, K;
};

class MoeLayoutCuda : public testing::GpuTest, public ::testing::WithParamInterface<LayoutCase> {};

TEST_P(MoeLayoutCuda, CountsAndPosMatchCpuExactly) {
  const LayoutCase c = GetParam();
  const Tensor idx = random_assignments(c.N, c.E, c.K, 500 + c.N);
  Tensor pos_ref = Tensor::empty({c.N, c.K}, DType::I32);
  const std::vector<int64_t> counts_ref = moe_dispatch_layout(testing::gpu_exec(), idx, c.E, pos_ref);
  Guarded pos({c.N, c.K}, DType::I32);
  const std::vector<int64_t> counts = moe_dispatch_layout(testing::gpu_exec(), idx.to(Device::CUDA), c.E, pos.view);
  EXPECT_EQ(counts, counts_ref);
  EXPECT_TRUE(identical(pos.view, pos_ref)) << "pos";
  EXPECT_TRUE(pos.guards_intact()) << "write outside pos";
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeLayoutCuda,
                         ::testing::Values(LayoutCase{1, 7, 1}, LayoutCase{1, 7, 8}, LayoutCase{333, 7, 3},
                                           LayoutCase{333, 256, 8}, LayoutCase{4096, 64, 8}, LayoutCase{1000, 1, 1},
                                           LayoutCase{65, 8192, 8}),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

// ---- dispatch / combine ---------------------------------------------------------------------------

struct DispatchCase {
  int64_t N, E, K, D;
  DType act;
};

class MoeDispatchCuda : public testing::GpuTest, public ::testing::WithParamInterface<DispatchCase> {};

TEST_P(MoeDispatchCuda, ForwardBackwardMatchCpu) {
  const DispatchCase c = GetParam();
  const bool bf16 = c.act == DType::BF16;
  const double atol = testing::act_atol(c.act), rtol = testing::act_rtol(c.act);
  auto act = [&](const Shape& shape, uint64_t seed) {  // f32 CPU values that the GPU dtype holds exactly
    const Tensor t = randn(shape, DType::F32, seed);
    return bf16 ? testing::bf16_round(t) : t;
  };
  const Tensor idx = random_assignments(c.N, c.E, c.K, 600 + c.N + c.D);
  Tensor pos = Tensor::empty({c.N, c.K}, DType::I32);
  const std::vector<int64_t> counts = moe_dispatch_layout(testing::gpu_exec(), idx, c.E, pos);
  int64_t M = 0;
  for (const int64_t n : counts) M += n;
  ASSERT_GT(M, 0);
  const Tensor x = act({c.N, c.D}, 61), ey = act({M, c.D}, 62), gy = act({c.N, c.D}, 63), gex = act({M, c.D}, 64);
  const Tensor w = randn({c.N, c.K}, DType::F32, 65);

  Tensor ex_ref = Tensor::empty({M, c.D}, DType::F32), gx_ref = Tensor::empty({c.N, c.D}, DType::F32);
  Tensor y_ref = Tensor::empty({c.N, c.D}, DType::F32), gey_ref = Tensor::empty({M, c.D}, DType::F32);
  Tensor gw_ref = Tensor::empty({c.N, c.K}, DType::F32);
  moe_dispatch_forward(testing::gpu_exec(), x, pos, ex_ref);
  moe_dispatch_backward(testing::gpu_exec(), gex, pos, gx_ref);
  moe_combine_forward(testing::gpu_exec(), ey, pos, w, y_ref);
  moe_combine_backward(testing::gpu_exec(), gy, ey, pos, w, gey_ref, gw_ref);

  Guarded gpos({c.N, c.K}, DType::I32);
  EXPECT_EQ(moe_dispatch_layout(testing::gpu_exec(), idx.to(Device::CUDA), c.E, gpos.view), counts);
  EXPECT_TRUE(identical(gpos.view, pos)) << "pos";
  const Tensor gw = to_gpu(w, DType::F32);  // the gates stay f32 with bf16 activations
  Guarded dex({M, c.D}, c.act), dgx({c.N, c.D}, c.act), dy({c.N, c.D}, c.act), dgey({M, c.D}, c.act);
  Guarded dgw({c.N, c.K}, DType::F32);
  moe_dispatch_forward(testing::gpu_exec(), to_gpu(x, c.act), gpos.view, dex.view);
  moe_dispatch_backward(testing::gpu_exec(), to_gpu(gex, c.act), gpos.view, dgx.view);
  moe_combine_forward(testing::gpu_exec(), to_gpu(ey, c.act), gpos.view, gw, dy.view);
  moe_combine_backward(testing::gpu_exec(), to_gpu(gy, c.act), to_gpu(ey, c.act), gpos.view, gw, dgey.view, dgw.view);

  EXPECT_TRUE(identical(dex.host_f32(), ex_ref)) << "expert_x (a copy: exact)";
  EXPECT_TRUE(testing::close(dgx.host_f32(), gx_ref, atol, rtol)) << "grad_x";
  EXPECT_TRUE(testing::close(dy.host_f32(), y_ref, atol, rtol)) << "y";
  EXPECT_TRUE(testing::close(dgey.host_f32(), gey_ref, atol, rtol)) << "grad_expert_y";
  // A dot product over D in f32 (of the same bf16-held values): f32 tolerance scaled by its length.
  EXPECT_TRUE(testing::close(dgw.view, gw_ref, 1e-6 * c.D, 1e-5)) << "grad_topk_weights";
  EXPECT_TRUE(dex.guards_intact() && dgx.guards_intact() && dy.guards_intact() && dgey.guards_intact() &&
              dgw.guards_intact())
      << "write outside an output";

  // Round trip: combining the dispatched rows themselves gives y = (sum of the kept gates) * x.
  Tensor rt_ref = Tensor::empty({c.N, c.D}, DType::F32);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t d = 0; d < c.D; ++d) {
      float acc = 0;
      for (int64_t k = 0; k < c.K; ++k)
        if (pos.data<int32_t>()[n * c.K + k] >= 0) acc += w.data<float>()[n * c.K + k] * x.data<float>()[n * c.D + d];
      rt_ref.data<float>()[n * c.D + d] = acc;
    }
  Guarded rt({c.N, c.D}, c.act);
  moe_combine_forward(testing::gpu_exec(), dex.view, gpos.view, gw, rt.view);
  EXPECT_TRUE(testing::close(rt.host_f32(), rt_ref, atol, rtol)) << "combine(dispatch(x))";
  EXPECT_TRUE(rt.guards_intact());
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeDispatchCuda,
                         ::testing::Values(DispatchCase{1, 7, 1, 7, DType::F32}, DispatchCase{1, 7, 8, 33, DType::F32},
                                           DispatchCase{333, 7, 3, 65, DType::F32},
                                           DispatchCase{333, 64, 8, 200, DType::F32},
                                           DispatchCase{65, 256, 8, 1, DType::F32},
                                           DispatchCase{333, 7, 3, 65, DType::BF16},
                                           DispatchCase{333, 64, 8, 200, DType::BF16},
                                           DispatchCase{1, 7, 1, 33, DType::BF16}),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

// ---- balance losses ---------------------------------------------------------------------------

struct BalanceCase {
  int64_t N, E, K, seq_len;
  Scores kind;
};

class MoeBalanceCuda : public testing::GpuTest, public ::testing::WithParamInterface<BalanceCase> {};

TEST_P(MoeBalanceCuda, AuxLossMatchesCpu) {
  const BalanceCase c = GetParam();
  const Tensor scores = make_scores(c.N, c.E, c.kind, 700 + c.N);
  Tensor idx = Tensor::empty({c.N, c.K}, DType::I32);
  moe_route_topk(testing::gpu_exec(), scores, make_bias(c.E, Scores::Sigmoid, 8), 1, 1, 0, idx);
  const double alpha = 0.5, grad_loss = 1.7;
  const Tensor gscores = to_gpu(scores, DType::F32), gidx = idx.to(Device::CUDA);

  const double loss_ref = aux_loss(scores, idx, c.seq_len, alpha);
  const double loss = aux_loss(gscores, gidx, c.seq_len, alpha);
  EXPECT_NEAR(loss, loss_ref, 1e-5 * std::fabs(loss_ref)) << "aux loss, seq_len " << c.seq_len;

  const Tensor g0 = randn({c.N, c.E}, DType::F32, 71, 1e-3);  // accumulated into
  Tensor g_ref = g0.to(DType::F32);
  moe_aux_loss_backward(testing::gpu_exec(), scores, idx, c.seq_len, alpha, grad_loss, g_ref);
  Guarded g({c.N, c.E}, DType::F32);
  g.view.copy_from(g0.to(Device::CUDA));
  moe_aux_loss_backward(testing::gpu_exec(), gscores, gidx, c.seq_len, alpha, grad_loss, g.view);
  EXPECT_TRUE(testing::close(g.view, g_ref, 1e-5 * max_abs(g_ref), 1e-5)) << "grad_scores (+=)";
  EXPECT_TRUE(g.guards_intact()) << "write outside grad_scores";

  // The whole batch's fractions given (a data-parallel part of a larger batch): no histogram.
  if (c.seq_len != c.N) return;
  std::vector<double> f(static_cast<size_t>(c.E));
  for (int64_t i = 0; i < c.E; ++i) f[static_cast<size_t>(i)] = 0.5 + 0.25 * static_cast<double>(i % 3);
  const double given_ref = aux_loss(scores, idx, c.N, alpha, f);
  const double given = aux_loss(gscores, gidx, c.N, alpha, f);
  EXPECT_NEAR(given, given_ref, 1e-5 * std::fabs(given_ref)) << "aux loss with given fractions";
  Tensor gf_ref = g0.to(DType::F32);
  moe_aux_loss_backward(testing::gpu_exec(), scores, idx, c.N, alpha, grad_loss, gf_ref, f);
  Guarded gf({c.N, c.E}, DType::F32);
  gf.view.copy_from(g0.to(Device::CUDA));
  moe_aux_loss_backward(testing::gpu_exec(), gscores, gidx, c.N, alpha, grad_loss, gf.view, f);
  EXPECT_TRUE(testing::close(gf.view, gf_ref, 1e-5 * max_abs(gf_ref), 1e-5)) << "grad_scores with given fractions";
  EXPECT_TRUE(gf.guards_intact());
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeBalanceCuda,
                         ::testing::Values(BalanceCase{1, 7, 1, 1, Scores::Sigmoid},
                                           BalanceCase{333, 7, 3, 37, Scores::Sigmoid},   // 9 sequences
                                           BalanceCase{333, 7, 3, 333, Scores::Sigmoid},  // batch-level
                                           BalanceCase{512, 256, 8, 128, Scores::Sigmoid},
                                           BalanceCase{512, 256, 8, 512, Scores::Sigmoid},
                                           BalanceCase{300, 64, 6, 100, Scores::Softmax},
                                           BalanceCase{4096, 64, 8, 4096, Scores::Sigmoid}),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

class MoeZLossCuda : public testing::GpuTest, public ::testing::WithParamInterface<std::pair<int64_t, int64_t>> {};

TEST_P(MoeZLossCuda, MatchesCpu) {
  const auto [N, E] = GetParam();
  const Tensor logits = randn({N, E}, DType::F32, 80 + N, 3.0);
  const double coef = 1e-3 * 7, grad_loss = 0.9;
  const double loss_ref = z_loss(logits, coef);
  const double loss = z_loss(to_gpu(logits, DType::F32), coef);
  EXPECT_NEAR(loss, loss_ref, 1e-5 * std::fabs(loss_ref)) << "z-loss";

  const Tensor g0 = randn({N, E}, DType::F32, 81, 1e-3);
  Tensor g_ref = g0.to(DType::F32);
  moe_z_loss_backward(testing::gpu_exec(), logits, coef, grad_loss, g_ref);
  Guarded g({N, E}, DType::F32);
  g.view.copy_from(g0.to(Device::CUDA));
  moe_z_loss_backward(testing::gpu_exec(), to_gpu(logits, DType::F32), coef, grad_loss, g.view);
  EXPECT_TRUE(testing::close(g.view, g_ref, 1e-5 * max_abs(g_ref), 1e-5)) << "grad_logits (+=)";
  EXPECT_TRUE(g.guards_intact()) << "write outside grad_logits";
}

INSTANTIATE_TEST_SUITE_P(Shapes, MoeZLossCuda,
                         ::testing::Values(std::make_pair(int64_t{1}, int64_t{1}), std::make_pair(int64_t{1}, int64_t{7}),
                                           std::make_pair(int64_t{333}, int64_t{7}),
                                           std::make_pair(int64_t{333}, int64_t{256}),
                                           std::make_pair(int64_t{4096}, int64_t{64})),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

// ---- the aux-loss-free bias update --------------------------------------------------------------

enum class Loads { CountsAtTheMean, Fractional, AllEqual };

// f32 [E] loads on the CPU.
//   CountsAtTheMean: whole counts 100 - d and 100 + d in pairs (d in [0, 5), so many experts sit
//                    exactly at the mean 100: sign 0), one more at 100 when E is odd.
//   Fractional:      U[0, 1000): a mean that is no load, summed in an order-sensitive way (the
//                    kernel must add in the CPU's index order to get the same mean).
//   AllEqual:        every expert at the mean: nothing moves.
Tensor make_loads(int64_t E, Loads kind, uint64_t seed) {  // f64, as the step accumulates them
  if (kind == Loads::Fractional) return rand_uniform({E}, DType::F32, seed, 0.0f, 1000.0f).to(DType::F64);
  Tensor load = Tensor::empty({E}, DType::F64);
  double* l = load.data<double>();
  if (kind == Loads::AllEqual) {
    for (int64_t i = 0; i < E; ++i) l[i] = 7.0;
    return load;
  }
  const Tensor d = randint({E / 2 + 1}, 5, seed);
  for (int64_t i = 0; i + 1 < E; i += 2) {
    l[i] = 100.0 - d.data<int32_t>()[i / 2];
    l[i + 1] = 100.0 + d.data<int32_t>()[i / 2];
  }
  if (E % 2) l[E - 1] = 100.0;
  return load;
}

class MoeBiasCuda : public testing::GpuTest, public ::testing::WithParamInterface<std::tuple<int64_t, Loads>> {};

TEST_P(MoeBiasCuda, MatchesCpuExactly) {
  const auto [E, kind] = GetParam();
  const Tensor load = make_loads(E, kind, 110 + static_cast<uint64_t>(E));
  const Tensor before = randn({E}, DType::F32, 111, 0.05);
  Tensor ref = before.to(DType::F32);
  moe_bias_update(Exec{}, load, 0.001, ref);
  Guarded bias({E}, DType::F32);
  bias.view.copy_from(before.to(Device::CUDA));
  const Tensor gload = load.to(Device::CUDA);
  moe_bias_update(testing::gpu_exec(), gload, 0.001, bias.view);
  EXPECT_TRUE(identical(bias.view, ref)) << "bias after one update";
  EXPECT_TRUE(testing::close(bias.host_f32(), ref, 0, 0));  // the max abs/rel error, if any
  EXPECT_TRUE(bias.guards_intact()) << "write outside the bias";
  // A second step from there: the same again (and the loads are only read).
  moe_bias_update(Exec{}, load, 0.001, ref);
  moe_bias_update(testing::gpu_exec(), gload, 0.001, bias.view);
  EXPECT_TRUE(identical(bias.view, ref)) << "bias after two updates";
  EXPECT_TRUE(identical(gload, load)) << "the loads were written";
  int64_t moved = 0;
  for (int64_t i = 0; i < E; ++i) moved += ref.data<float>()[i] != before.data<float>()[i];
  if (kind == Loads::AllEqual) EXPECT_EQ(moved, 0);
  else EXPECT_GT(moved, 0);
  std::printf("E = %lld: %lld of %lld biases moved, GPU identical to the CPU\n", static_cast<long long>(E),
              static_cast<long long>(moved), static_cast<long long>(E));
}

INSTANTIATE_TEST_SUITE_P(Cases, MoeBiasCuda,
                         ::testing::Combine(::testing::Values(int64_t{1}, int64_t{7}, int64_t{256}, int64_t{1001},
                                                              int64_t{8192}),
                                            ::testing::Values(Loads::CountsAtTheMean, Loads::Fractional,
                                                              Loads::AllEqual)),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

// ---- determinism --------------------------------------------------------------------------------

using MoeOpsCudaDeterminism = testing::GpuTest;

TEST_F(MoeOpsCudaDeterminism, TwoRunsAreBitIdentical) {
  const int64_t N = 2048, E = 64, K = 8, D = 300;
  const Tensor scores = to_gpu(make_scores(N, E, Scores::Sigmoid, 90), DType::F32);
  const Tensor bias = to_gpu(make_bias(E, Scores::Sigmoid, 91), DType::F32);
  auto run = [&]() {
    std::vector<Tensor> out;
    auto dev = [&](const Shape& s, DType t) {
      out.push_back(Tensor::empty(s, t, Device::CUDA));
      return out.back();
    };
    const Tensor idx = dev({N, K}, DType::I32), w = dev({N, K}, DType::F32), gs = dev({N, E}, DType::F32);
    moe_route_topk(testing::gpu_exec(), scores, bias, 8, 4, 0, idx);
    moe_gate_forward(testing::gpu_exec(), scores, idx, true, 2.5, w);
    moe_gate_backward(testing::gpu_exec(), w, scores, idx, true, 2.5, gs);
    const Tensor kept = dev({N, K}, DType::I32), pos = dev({N, K}, DType::I32);
    const int64_t dropped = moe_capacity_drop(testing::gpu_exec(), scores, idx, moe_capacity(0.8, N, K, E), kept);
    EXPECT_GT(dropped, 0);
    int64_t M = 0;
    for (const int64_t n : moe_dispatch_layout(testing::gpu_exec(), kept, E, pos)) M += n;
    const Tensor x = to_gpu(randn({N, D}, DType::F32, 92), DType::BF16);
    const Tensor ex = dev({M, D}, DType::BF16), y = dev({N, D}, DType::BF16), gx = dev({N, D}, DType::BF16);
    const Tensor gey = dev({M, D}, DType::BF16), gw = dev({N, K}, DType::F32);
    moe_dispatch_forward(testing::gpu_exec(), x, pos, ex);
    moe_combine_forward(testing::gpu_exec(), ex, pos, w, y);
    moe_combine_backward(testing::gpu_exec(), y, ex, pos, w, gey, gw);
    moe_dispatch_backward(testing::gpu_exec(), gey, pos, gx);
    const Tensor ga = dev({N, E}, DType::F32), gz = dev({N, E}, DType::F32);
    ga.zero();
    gz.zero();
    const double aux = aux_loss(scores, idx, 256, 0.1);
    moe_aux_loss_backward(testing::gpu_exec(), scores, idx, 256, 0.1, 1.0, ga);
    const double z = z_loss(scores, 1.0);
    moe_z_loss_backward(testing::gpu_exec(), scores, 1.0, 1.0, gz);
    const Tensor tv = dev({N, K}, DType::F32), ti = dev({N, K}, DType::I32), tg = dev({N, E}, DType::F32);
    topk_forward(testing::gpu_exec(), gs, K, tv, ti);
    topk_backward(testing::gpu_exec(), tv, ti, tg);
    return std::make_tuple(out, aux, z, dropped);
  };
  const auto [a, aux_a, z_a, drop_a] = run();
  const auto [b, aux_b, z_b, drop_b] = run();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(identical(a[i], b[i])) << "output " << i;
  EXPECT_EQ(aux_a, aux_b);
  EXPECT_EQ(z_a, z_b);
  EXPECT_EQ(drop_a, drop_b);
}

// ---- invalid inputs on the GPU ------------------------------------------------------------------

using MoeOpsCudaErrors = testing::GpuTest;

TEST_F(MoeOpsCudaErrors, WrongDtypesNameTheOp) {
  const Tensor s16 = to_gpu(make_scores(4, 8, Scores::Sigmoid, 1), DType::BF16);
  const Tensor idx = Tensor::empty({4, 2}, DType::I32, Device::CUDA);
  testing::expect_error([&] { moe_route_topk(testing::gpu_exec(), s16, Tensor(), 1, 1, 0, idx); }, "moe_route_topk");
  testing::expect_error(
      [&] {
        topk_forward(testing::gpu_exec(), s16, 2, Tensor::empty({4, 2}, DType::BF16, Device::CUDA), idx);
      },
      "topk_forward");
  // Combine with bf16 activations takes f32 gates, not bf16 ones.
  const Tensor pos = to_gpu(i32_tensor({2, 1}, {0, 1}), DType::I32);
  const Tensor ey = Tensor::empty({2, 4}, DType::BF16, Device::CUDA), y = Tensor::empty({2, 4}, DType::BF16, Device::CUDA);
  testing::expect_error(
      [&] {
        moe_combine_forward(testing::gpu_exec(), ey, pos, Tensor::empty({2, 1}, DType::BF16, Device::CUDA), y);
      },
      "moe_combine_forward");
  testing::expect_error(
      [&] {
        z_loss(Tensor::empty({2, 4}, DType::BF16, Device::CUDA), 1.0);
      },
      "moe_z_loss_forward");
  // The bias update takes an f32 bias and f64 loads on one device.
  const Tensor load = Tensor::zeros({4}, DType::F64, Device::CUDA);
  testing::expect_error(
      [&] { moe_bias_update(testing::gpu_exec(), load, 0.001, Tensor::zeros({4}, DType::F64).to(Device::CUDA)); },
      "moe_bias_update: bias is f64[4]@cuda, expected dtype f32");
  testing::expect_error([&] { moe_bias_update(testing::gpu_exec(), Tensor::zeros({4}, DType::F64), 0.001,
                                              Tensor::zeros({4}, DType::F32, Device::CUDA)); },
                        "moe_bias_update");
}

TEST_F(MoeOpsCudaErrors, OutOfRangeIndices) {
  const Tensor scores = to_gpu(make_scores(2, 4, Scores::Sigmoid, 2), DType::F32);
  const Tensor bad = to_gpu(i32_tensor({2, 2}, {0, 1, 5, 2}), DType::I32);  // expert 5 of E = 4
  const Tensor kept = Tensor::empty({2, 2}, DType::I32, Device::CUDA);
  // The ops that copy counts to the host throw, naming the op; the counts that stay on the device
  // turn NaN.
  testing::expect_error([&] { moe_capacity_drop(testing::gpu_exec(), scores, bad, 1, kept); }, "moe_capacity_drop");
  const Tensor counts = Tensor::empty({4}, DType::F64, Device::CUDA);
  moe_count_tokens(testing::gpu_exec(), bad, counts);
  const Tensor host = to_host(counts);
  for (int64_t e = 0; e < 4; ++e) EXPECT_TRUE(std::isnan(host.data<double>()[e])) << "count " << e;
  testing::expect_error(
      [&] {
        moe_dispatch_layout(testing::gpu_exec(), to_gpu(i32_tensor({2, 2}, {0, 1, -2, 2}), DType::I32), 4, kept);
      },
      "moe_dispatch_layout");
  EXPECT_TRUE(std::isnan(aux_loss(scores, bad, 2, 1.0))) << "the aux loss of an out-of-range selection";
  // The others never read out of bounds: the bad token's row becomes NaN, the good one is exact.
  Guarded w({2, 2}, DType::F32), gs({2, 4}, DType::F32), gx({2, 4}, DType::F32);
  moe_gate_forward(testing::gpu_exec(), scores, bad, false, 1.0, w.view);
  moe_gate_backward(testing::gpu_exec(), to_gpu(randn({2, 2}, DType::F32, 3), DType::F32), scores, bad, true, 1.0,
                    gs.view);
  topk_backward(testing::gpu_exec(), to_gpu(randn({2, 2}, DType::F32, 4), DType::F32), bad, gx.view);
  for (const Guarded* g : {&w, &gs, &gx}) {
    const Tensor h = g->host_f32();
    const int64_t cols = h.size(1);
    for (int64_t j = 0; j < cols; ++j) {
      EXPECT_FALSE(std::isnan(h.data<float>()[j])) << "row 0, column " << j;
      EXPECT_TRUE(std::isnan(h.data<float>()[cols + j])) << "row 1, column " << j;
    }
    EXPECT_TRUE(g->guards_intact());
  }
}

}  // namespace
}  // namespace moelab
