// MoE routing ops (core/ops/moe_route.h) on the CPU, called directly: the capacity formula, the
// argument errors of routing, gates and capacity drops, and the group scores of moe_route_topk
// (group_topk: Hugging Face's rule and node-limited routing) against a brute force written here
// from the rule. The MoE layer's routing (top-K, groups, ties, gates, drops) is checked against
// plain loops in tests/nn/test_moe.cpp, and on the GPU against this reference in
// tests/gpu/test_moe_ops_cuda.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "core/nn/config.h"
#include "core/ops/moe_route.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::i32_tensor;
using testing::randn;

TEST(MoeRoute, CapacityFormula) {
  EXPECT_EQ(moe_capacity(1.25, 8, 2, 4), 5);   // exactly 5.0
  EXPECT_EQ(moe_capacity(1.0, 10, 2, 8), 3);   // 2.5 -> 3
  EXPECT_EQ(moe_capacity(0.3, 10, 2, 8), 1);   // 0.75 -> 1
  EXPECT_THROW(moe_capacity(0.0, 10, 2, 8), Error);
}

TEST(MoeRoute, RejectsBadArguments) {
  Tensor scores = randn({2, 4}, DType::F64, 171), w = Tensor::empty({2, 2}, DType::F64);
  Tensor idx = Tensor::empty({2, 2}, DType::I32), pos = Tensor::empty({2, 2}, DType::I32);
  EXPECT_THROW(moe_route_topk(Exec{}, scores, Tensor(), 3, 1, 0, idx), Error);   // 3 groups do not divide E = 4
  EXPECT_THROW(moe_route_topk(Exec{}, scores, Tensor(), 2, 3, 0, idx), Error);   // topk_group > n_group
  EXPECT_THROW(moe_route_topk(Exec{}, scores, Tensor::empty({3}, DType::F64), 1, 1, 0, idx), Error);  // bias [3]
  EXPECT_THROW(moe_gate_forward(Exec{}, scores, i32_tensor({2, 2}, {0, 4, 1, 2}), true, 1.0, w), Error);  // expert 4
  EXPECT_THROW(moe_capacity_drop(Exec{}, scores, i32_tensor({2, 2}, {0, 1, 5, 2}), 1, pos), Error);       // expert 5
}

// Hand-counted: experts 0..3 of topk_idx with a dropped (-1) entry; the counts overwrite whatever
// the tensor held; an index out of [-1, E) and a counts tensor of the wrong dtype are named.
TEST(MoeRoute, CountTokensHandCounted) {
  const Tensor idx = i32_tensor({3, 2}, {0, 2, 2, -1, 3, 2});
  Tensor counts = Tensor::empty({4}, DType::F64);
  counts.fill(99.0);
  moe_count_tokens(Exec{}, idx, counts);
  EXPECT_EQ(std::vector<double>(counts.data<double>(), counts.data<double>() + 4), (std::vector<double>{1, 0, 3, 1}));
  testing::expect_error([&] { moe_count_tokens(Exec{}, i32_tensor({1, 2}, {0, 4}), counts); }, "topk_idx");
  testing::expect_error([&] { moe_count_tokens(Exec{}, idx, Tensor::empty({4}, DType::F32)); },
                        "counts is f32[4]@cpu, expected dtype f64");
}

TEST(MoeRoute, GroupTopkErrorsNameTheValues) {
  const Tensor scores = randn({2, 4}, DType::F64, 172), bias = randn({4}, DType::F64, 173);
  const Tensor idx = Tensor::empty({2, 2}, DType::I32);
  // A group of 2 experts can not sum its best 3.
  testing::expect_error([&] { moe_route_topk(Exec{}, scores, bias, 2, 1, 3, idx); },
                        "group_topk = 3, expected 0 <= group_topk <= the 2 experts per group (E = 4, n_group = 2");
  testing::expect_error([&] { moe_route_topk(Exec{}, scores, bias, 2, 1, -1, idx); }, "group_topk = -1");
  // Groups of one: HF's biased rule (group_topk = 0) needs two experts a group, an explicit 1 does not.
  testing::expect_error([&] { moe_route_topk(Exec{}, scores, bias, 4, 2, 0, idx); },
                        "n_group = 4 leaves 1 expert per group; with group_topk = 0");
  EXPECT_NO_THROW(moe_route_topk(Exec{}, scores, bias, 4, 2, 1, idx));
  EXPECT_NO_THROW(moe_route_topk(Exec{}, scores, Tensor(), 4, 2, 0, idx));  // no bias: the max, one is enough
  EXPECT_NO_THROW(moe_route_topk(Exec{}, scores, bias, 1, 1, 4, idx));      // one group: E = 4 is enough
}

// ---- group scores against a brute force ---------------------------------------------------------

// "x scores higher than y": larger first, NaN above every number (torch.topk's order, the op's rule).
template <typename T>
bool higher(T x, T y) {
  return std::isnan(x) ? !std::isnan(y) : !std::isnan(y) && x > y;
}

// Routing written from its definition, sorting everything (independent of the op's partial sorts):
// per token, sel = s + b; each group (node) of E / G consecutive experts scores the sum of its
// `summed` largest sel, added largest first; groups ordered by (score desc, index asc), the first
// M kept; then the K largest sel among the kept groups' experts, ties to the lower expert.
template <typename T>
std::vector<int32_t> brute_force_route(const std::vector<T>& s, const std::vector<T>& b, bool has_bias, int64_t N,
                                       int64_t E, int64_t K, int64_t G, int64_t M, int64_t summed) {
  const int64_t per_group = E / G;
  std::vector<int32_t> out;
  for (int64_t n = 0; n < N; ++n) {
    std::vector<T> sel(E);
    for (int64_t e = 0; e < E; ++e) sel[e] = has_bias ? s[n * E + e] + b[e] : s[n * E + e];
    std::vector<T> score(G);
    for (int64_t g = 0; g < G; ++g) {
      std::vector<T> v(sel.begin() + g * per_group, sel.begin() + (g + 1) * per_group);
      std::sort(v.begin(), v.end(), higher<T>);
      T sum = v[0];
      for (int64_t j = 1; j < summed; ++j) sum += v[j];
      score[g] = sum;
    }
    std::vector<int32_t> groups(G);
    std::iota(groups.begin(), groups.end(), 0);
    std::stable_sort(groups.begin(), groups.end(), [&](int32_t a, int32_t c) { return higher(score[a], score[c]); });
    std::vector<int32_t> candidates;
    for (int64_t j = 0; j < (G > 1 ? M : 1); ++j)
      for (int64_t e = 0; e < per_group; ++e) candidates.push_back(static_cast<int32_t>(groups[j] * per_group + e));
    std::sort(candidates.begin(), candidates.end());  // expert order, so the stable sort breaks ties by index
    std::stable_sort(candidates.begin(), candidates.end(),
                     [&](int32_t a, int32_t c) { return higher(sel[a], sel[c]); });
    out.insert(out.end(), candidates.begin(), candidates.begin() + K);
  }
  return out;
}

enum class Kind { Uniform, Ties, NaN };

// Scores [N, E] in [0, 1): distinct, on 4 levels (many exact ties, in experts and in node sums),
// or with ~5% NaNs; the bias is small, or a multiple of 1/8 with tied scores so that the sums
// stay exact and the ties survive.
struct RouteInputs {
  Tensor scores, bias;
};
RouteInputs make_inputs(int64_t N, int64_t E, Kind kind, bool with_bias, DType dtype, uint64_t seed) {
  RouteInputs in;
  in.scores = testing::rand_uniform({N, E}, DType::F64, seed, 0.0f, 1.0f);
  const Tensor u = testing::rand_uniform({N, E}, DType::F64, seed + 1, 0.0f, 1.0f);
  double* p = in.scores.data<double>();
  for (int64_t i = 0; i < N * E; ++i) {
    if (kind == Kind::Ties) p[i] = std::floor(p[i] * 4.0) / 4.0;
    if (kind == Kind::NaN && u.data<double>()[i] < 0.05) p[i] = std::numeric_limits<double>::quiet_NaN();
  }
  if (with_bias) {
    in.bias = randn({E}, DType::F64, seed + 2, 0.05);
    if (kind == Kind::Ties) {
      const Tensor levels = testing::randint({E}, 3, seed + 3);
      for (int64_t e = 0; e < E; ++e) in.bias.data<double>()[e] = levels.data<int32_t>()[e] / 8.0;
    }
  }
  in.scores = in.scores.to(dtype);
  if (with_bias) in.bias = in.bias.to(dtype);
  return in;
}

template <typename T>
std::vector<T> values(const Tensor& t) {
  return t.defined() ? std::vector<T>(t.data<T>(), t.data<T>() + t.numel()) : std::vector<T>();
}

std::vector<int32_t> route(const RouteInputs& in, int64_t K, int64_t G, int64_t M, int64_t group_topk) {
  Tensor idx = Tensor::empty({in.scores.size(0), K}, DType::I32);
  moe_route_topk(Exec{}, in.scores, in.bias, G, M, group_topk, idx);
  return std::vector<int32_t>(idx.data<int32_t>(), idx.data<int32_t>() + idx.numel());
}

std::vector<int32_t> brute_force(const RouteInputs& in, int64_t K, int64_t G, int64_t M, int64_t summed) {
  const int64_t N = in.scores.size(0), E = in.scores.size(1);
  if (in.scores.dtype() == DType::F32)
    return brute_force_route<float>(values<float>(in.scores), values<float>(in.bias), in.bias.defined(), N, E, K, G, M,
                                    summed);
  return brute_force_route<double>(values<double>(in.scores), values<double>(in.bias), in.bias.defined(), N, E, K, G,
                                   M, summed);
}

// The first token and slot where two selections differ, for the failure message.
std::string first_difference(const std::vector<int32_t>& a, const std::vector<int32_t>& b, int64_t K) {
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (a[i] != b[i])
      return "token " + std::to_string(i / K) + " slot " + std::to_string(i % K) + ": " + std::to_string(a[i]) +
             " vs " + std::to_string(b[i]);
  return a.size() == b.size() ? "none" : "different sizes";
}

// Many node-limited layouts: E experts over `nodes` nodes, M nodes kept, K experts per token.
struct NodeCase {
  int64_t E, nodes, M, K;
};
std::vector<NodeCase> node_cases() {
  std::vector<NodeCase> cases;
  for (int64_t E : {4, 6, 8, 12, 16, 32, 60, 64})
    for (int64_t nodes = 2; nodes <= E; ++nodes) {
      if (E % nodes != 0) continue;
      const int64_t per_node = E / nodes;
      std::set<int64_t> Ms = {1, 2, 3, nodes / 2, nodes - 1};
      for (int64_t M : Ms) {
        if (M < 1 || M >= nodes) continue;  // node-limited only when the experts span more than M nodes
        for (int64_t K : {int64_t{1}, int64_t{2}, int64_t{3}, M, 2 * M, 2 * M - 1, 3 * M, M * per_node, E}) {
          const int64_t summed = (K + M - 1) / M;
          if (K < 1 || K > E || per_node < summed) continue;
          cases.push_back({E, nodes, M, K});
        }
      }
    }
  return cases;
}

TEST(MoeRouteNodeLimited, MatchesBruteForceAndReachesAtMostMNodes) {
  const std::vector<NodeCase> cases = node_cases();
  ASSERT_GT(cases.size(), 200u);
  constexpr int64_t N = 24;
  int64_t checked = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const NodeCase c = cases[i];
    const int64_t summed = (c.K + c.M - 1) / c.M, per_node = c.E / c.nodes;
    // Each layout with every kind of scores, with and without a bias, in f32 and f64 (by turns).
    for (int variant = 0; variant < 6; ++variant) {
      const Kind kind = static_cast<Kind>(variant % 3);
      const bool with_bias = variant / 3 == 1;
      const DType dtype = (i + variant) % 2 ? DType::F32 : DType::F64;
      SCOPED_TRACE("E " + std::to_string(c.E) + " nodes " + std::to_string(c.nodes) + " M " + std::to_string(c.M) +
                   " K " + std::to_string(c.K) + " kind " + std::to_string(variant % 3) + " bias " +
                   std::to_string(with_bias) + " " + dtype_name(dtype));
      const RouteInputs in = make_inputs(N, c.E, kind, with_bias, dtype, 1000 + 17 * i + variant);
      const std::vector<int32_t> got = route(in, c.K, c.nodes, c.M, summed);
      const std::vector<int32_t> want = brute_force(in, c.K, c.nodes, c.M, summed);
      ASSERT_EQ(got, want) << "first difference: " << first_difference(got, want, c.K);
      // Every token reaches at most M nodes, and K distinct experts.
      for (int64_t n = 0; n < N; ++n) {
        std::set<int32_t> nodes, experts;
        for (int64_t k = 0; k < c.K; ++k) {
          const int32_t e = got[n * c.K + k];
          ASSERT_TRUE(e >= 0 && e < c.E) << "token " << n << " expert " << e;
          nodes.insert(static_cast<int32_t>(e / per_node));
          experts.insert(e);
        }
        ASSERT_LE(static_cast<int64_t>(nodes.size()), c.M) << "token " << n;
        ASSERT_EQ(static_cast<int64_t>(experts.size()), c.K) << "token " << n;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int64_t>(6 * cases.size()));
}

TEST(MoeRouteNodeLimited, IsGroupLimitedRoutingWithNodesAsGroups) {
  // ModelConfig::route_groups() hands moe_route_topk the nodes as groups and ceil(K / M) as the
  // group score's count, for every node-limited layout; a run within its node limit keeps the groups.
  for (const NodeCase& c : node_cases()) {
    ModelConfig cfg;
    cfg.n_routed_experts = c.E;
    cfg.num_experts_per_tok = c.K;
    cfg.aux_free_bias = true;
    cfg.max_nodes_per_token = c.M;
    cfg.expert_nodes = c.nodes;
    ASSERT_NO_THROW(cfg.validate()) << "E " << c.E << " nodes " << c.nodes << " M " << c.M << " K " << c.K;
    ASSERT_TRUE(cfg.node_limited());
    const ModelConfig::RouteGroups g = cfg.route_groups();
    EXPECT_EQ(g.n_group, c.nodes);
    EXPECT_EQ(g.topk_group, c.M);
    EXPECT_EQ(g.group_topk, (c.K + c.M - 1) / c.M);
  }
  ModelConfig cfg;  // E = 8, K = 2
  cfg.n_group = 4;
  cfg.topk_group = 2;
  cfg.max_nodes_per_token = 2;
  cfg.expert_nodes = 2;  // within the limit: not node-limited, the groups stay
  EXPECT_NO_THROW(cfg.validate());
  EXPECT_FALSE(cfg.node_limited());
  const ModelConfig::RouteGroups g = cfg.route_groups();
  EXPECT_EQ(g.n_group, 4);
  EXPECT_EQ(g.topk_group, 2);
  EXPECT_EQ(g.group_topk, 0);
  cfg = ModelConfig{};
  cfg.max_nodes_per_token = 0;  // unlimited
  cfg.expert_nodes = 4;
  EXPECT_FALSE(cfg.node_limited());
  EXPECT_EQ(cfg.route_groups().n_group, 1);
}

TEST(MoeRouteNodeLimited, TwoPerNodeWithABiasIsHuggingFacesRule) {
  // ceil(K / M) = 2 with a bias: the node score is HF's V3 group score (top-2 sum), so group_topk = 2
  // and group_topk = 0 choose alike; ceil(K / M) = 1 without a bias is V2's max rule.
  int64_t compared = 0;
  for (const NodeCase& c : node_cases()) {
    const int64_t summed = (c.K + c.M - 1) / c.M;
    if (summed > 2) continue;
    for (const Kind kind : {Kind::Uniform, Kind::Ties, Kind::NaN}) {
      const bool with_bias = summed == 2;
      const RouteInputs in = make_inputs(16, c.E, kind, with_bias, DType::F32, 5000 + c.E * 31 + c.nodes * 7 + c.K);
      EXPECT_EQ(route(in, c.K, c.nodes, c.M, summed), route(in, c.K, c.nodes, c.M, 0))
          << "E " << c.E << " nodes " << c.nodes << " M " << c.M << " K " << c.K;
      ++compared;
    }
  }
  EXPECT_GT(compared, 50);
}

TEST(MoeRouteNodeLimited, HuggingFaceRuleIsUnchanged) {
  // group_topk = 0: groups score the sum of their top 2 with a bias, their max without (the
  // existing rule of every n_group > 1 config), against the brute force.
  struct GroupCase {
    int64_t E, G, M, K;
  };
  for (const GroupCase c : {GroupCase{8, 2, 1, 2}, GroupCase{16, 4, 2, 4}, GroupCase{64, 8, 3, 6},
                            GroupCase{60, 6, 2, 4}, GroupCase{256, 8, 4, 8}, GroupCase{32, 4, 2, 8}})
    for (int variant = 0; variant < 6; ++variant) {
      const Kind kind = static_cast<Kind>(variant % 3);
      const bool with_bias = variant / 3 == 1;
      SCOPED_TRACE("E " + std::to_string(c.E) + " G " + std::to_string(c.G) + " M " + std::to_string(c.M) + " K " +
                   std::to_string(c.K) + " kind " + std::to_string(variant % 3) + " bias " + std::to_string(with_bias));
      const DType dtype = variant % 2 ? DType::F32 : DType::F64;
      const RouteInputs in = make_inputs(40, c.E, kind, with_bias, dtype, 9000 + c.E + variant);
      const std::vector<int32_t> got = route(in, c.K, c.G, c.M, 0);
      const std::vector<int32_t> want = brute_force(in, c.K, c.G, c.M, with_bias ? 2 : 1);
      EXPECT_EQ(got, want) << "first difference: " << first_difference(got, want, c.K);
    }
}

TEST(MoeRouteNodeLimited, HandWorkedToken) {
  // 8 experts on 4 nodes of 2, K = 4, M = 2: a node scores its top ceil(4/2) = 2.
  //   node 0 {0.9, 0.0} = 0.9   node 1 {0.5, 0.5} = 1.0   node 2 {0.6, 0.45} = 1.05   node 3 = 0.2
  // Nodes 2 and 1 are kept; their experts by score: 4 (0.6), 2 and 3 (0.5, tie: the lower first), 5.
  // The max rule (group_topk = 1) would keep nodes 0 (0.9) and 2 (0.6) instead.
  const Tensor s = Tensor::empty({1, 8}, DType::F64);
  const double v[8] = {0.9, 0.0, 0.5, 0.5, 0.6, 0.45, 0.1, 0.1};
  std::copy_n(v, 8, s.data<double>());
  const Tensor idx = Tensor::empty({1, 4}, DType::I32);
  moe_route_topk(Exec{}, s, Tensor(), 4, 2, 2, idx);
  EXPECT_EQ(std::vector<int32_t>(idx.data<int32_t>(), idx.data<int32_t>() + 4), (std::vector<int32_t>{4, 2, 3, 5}));
  moe_route_topk(Exec{}, s, Tensor(), 4, 2, 1, idx);
  EXPECT_EQ(std::vector<int32_t>(idx.data<int32_t>(), idx.data<int32_t>() + 4), (std::vector<int32_t>{0, 4, 5, 1}));
  // Unlimited, the token would take experts on three nodes: 0, 4, 2, 3.
  moe_route_topk(Exec{}, s, Tensor(), 1, 1, 0, idx);
  EXPECT_EQ(std::vector<int32_t>(idx.data<int32_t>(), idx.data<int32_t>() + 4), (std::vector<int32_t>{0, 4, 2, 3}));
}

}  // namespace
}  // namespace moelab
