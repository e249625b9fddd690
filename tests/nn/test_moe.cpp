// DeepSeekMoE layer (core/nn/moe.h): hand-worked routing cases, capacity, statistics, the bias
// update, the balance losses against plain loops, naive vs grouped experts, f32 vs f64, and
// gradient checks in double of loss = <y, G> + stats.balance_loss() for every parameter and x.
// Routing is piecewise: every gradient check first recomputes the routing with plain loops and
// ASSERTS that each decision (top-K, kept groups, capacity) is at least kMinMargin away from a
// tie, far beyond the finite-difference step, so that no check passes by luck.
// The ops the layer calls have their own CPU tests in tests/ops (test_moe_route, test_moe_dispatch,
// test_moe_balance, test_moe_bias).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <tuple>
#include <vector>

#include "core/nn/moe.h"
#include "core/ops/moe_route.h"
#include "tests/nn/nn_harness.h"

namespace moelab {
namespace {
using testing::randn;

constexpr double kMinMargin = 1e-3;  // >> kGradStep (1e-6) times any |d score / d input| here
constexpr double kInf = std::numeric_limits<double>::infinity();

// Tiny shapes with a router spread wide enough (init std 0.5 over D = 8: logits of std ~1.4) that
// the scores are far apart.
ModelConfig small_config() {
  ModelConfig c;
  c.hidden_size = 8;
  c.moe_intermediate_size = 4;
  c.n_routed_experts = 6;
  c.num_experts_per_tok = 2;
  c.n_shared_experts = 0;
  c.initializer_range = 0.5;
  c.aux_free_bias = false;
  return c;
}

// A MoE layer with its parameters, buffers, arena and context; runs forward (and backward) from a
// fresh arena each time, as a training step would.
class Layer {
 public:
  Layer(const ModelConfig& config, int64_t batch, int64_t seq_len, DType dtype, uint64_t seed)
      : cfg(config), arena(8 << 20, Device::CPU), ctx{&arena, dtype, batch, seq_len} {
    moe = MoE(params, buffers, "model.layers.1.mlp", cfg);
    params.allocate(Device::CPU, dtype);
    params.initialize(seed);
    buffers.allocate(Device::CPU, dtype, /*with_grads=*/false);
    buffers.initialize(seed);
  }
  Layer(const Layer&) = delete;  // moe points into params and buffers

  int64_t tokens() const { return ctx.tokens(); }

  // y and saved are valid until the next call; stats: the forward's, read on the host.
  Tensor forward(const Tensor& x, MoE::Saved& saved, MoEStats& stats) {
    arena.reset();
    Tensor y = ctx.alloc({tokens(), cfg.hidden_size});
    moe.forward(ctx, x, y, saved);
    stats = moe.read_stats(saved);
    return y;
  }
  // The checked scalar: L = <y, G> + balance_loss.
  double loss(const Tensor& x, const Tensor& G) {
    MoE::Saved saved;
    MoEStats stats;
    const Tensor y = forward(x, saved, stats);
    return testing::dot(y, G) + stats.balance_loss();
  }
  // dL/dy = G, dL/d balance_loss = balance_scale; parameter gradients accumulate into params.
  void backward(const Tensor& x, const Tensor& G, const Tensor& grad_x, double balance_scale = 1.0) {
    MoE::Saved saved;
    MoEStats stats;
    forward(x, saved, stats);
    moe.backward(ctx, saved, G, balance_scale, grad_x);
  }

  ModelConfig cfg;
  ParamBuffer params, buffers;
  MoE moe;
  Arena arena;
  Context ctx;
};

// The routing recomputed with plain loops from the scores (an implementation independent of
// core/ops/moe_route), and the distance of every decision from a tie:
//   topk:     K-th minus (K+1)-th masked selection score (per token)
//   group:    topk_group-th minus next group score (per token, when groups are limited)
//   capacity: cap-th minus (cap+1)-th unbiased score among an overflowing expert's tokens
struct Routing {
  std::vector<std::vector<int>> selected;  // [N][K], best first
  double topk = kInf, group = kInf, capacity = kInf;
};

// Indices of v sorted by value, largest first, ties to the lower index.
std::vector<int> ranked(const std::vector<double>& v) {
  std::vector<int> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] > v[b]; });
  return order;
}

Routing reference_routing(const ModelConfig& cfg, const Tensor& scores_in, const Tensor& bias_in) {
  const Tensor s = scores_in.to(DType::F64);
  const int64_t N = s.size(0), E = s.size(1), K = cfg.num_experts_per_tok, G = cfg.n_group, M = cfg.topk_group;
  const int64_t per_group = E / G;
  std::vector<double> b(E, 0.0);
  if (bias_in.defined()) {
    const Tensor bt = bias_in.to(DType::F64);
    std::copy_n(bt.data<double>(), E, b.begin());
  }
  Routing r;
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> sel(E);
    for (int64_t e = 0; e < E; ++e) sel[e] = s.data<double>()[n * E + e] + b[e];
    std::vector<bool> allowed(E, true);
    if (G > 1) {
      std::vector<double> group_score(G);
      for (int64_t g = 0; g < G; ++g) {
        std::vector<double> members(sel.begin() + g * per_group, sel.begin() + (g + 1) * per_group);
        std::sort(members.rbegin(), members.rend());
        group_score[g] = cfg.aux_free_bias ? members[0] + members[1] : members[0];
      }
      const std::vector<int> order = ranked(group_score);
      if (M < G) r.group = std::min(r.group, group_score[order[M - 1]] - group_score[order[M]]);
      for (int64_t j = M; j < G; ++j)
        for (int64_t e = 0; e < per_group; ++e) allowed[order[j] * per_group + e] = false;
    }
    std::vector<double> candidates(E);
    for (int64_t e = 0; e < E; ++e) candidates[e] = allowed[e] ? sel[e] : -kInf;
    const std::vector<int> order = ranked(candidates);
    if (K < E && allowed[order[K]]) r.topk = std::min(r.topk, candidates[order[K - 1]] - candidates[order[K]]);
    r.selected.emplace_back(order.begin(), order.begin() + K);
  }
  if (cfg.capacity_factor > 0) {
    const int64_t cap = static_cast<int64_t>(std::ceil(cfg.capacity_factor * N * K / E));
    for (int64_t e = 0; e < E; ++e) {
      std::vector<double> v;
      for (int64_t n = 0; n < N; ++n)
        for (int x : r.selected[n])
          if (x == e) v.push_back(s.data<double>()[n * E + e]);
      std::sort(v.rbegin(), v.rend());
      if (static_cast<int64_t>(v.size()) > cap) r.capacity = std::min(r.capacity, v[cap - 1] - v[cap]);
    }
  }
  return r;
}

// Runs one forward and asserts the saved selection is the reference one, every margin is wide,
// and (when wanted) that the capacity dropped something. Returns the stats.
MoEStats assert_clear_routing(Layer& layer, const Tensor& x, bool expect_drops = false) {
  MoE::Saved saved;
  MoEStats stats;
  layer.forward(x, saved, stats);
  const Routing r = reference_routing(layer.cfg, saved.scores, layer.moe.e_score_correction_bias());
  const int64_t K = layer.cfg.num_experts_per_tok;
  for (int64_t n = 0; n < layer.tokens(); ++n)
    for (int64_t k = 0; k < K; ++k)
      EXPECT_EQ(saved.topk_idx.data<int32_t>()[n * K + k], r.selected[n][k]) << "token " << n << " slot " << k;
  EXPECT_GT(r.topk, kMinMargin) << "a top-K choice is within " << r.topk << " of a tie: pick another seed";
  EXPECT_GT(r.group, kMinMargin) << "a group choice is within " << r.group << " of a tie: pick another seed";
  EXPECT_GT(r.capacity, kMinMargin) << "a capacity cut is within " << r.capacity << " of a tie: pick another seed";
  if (layer.cfg.n_group > 1 && layer.cfg.topk_group < layer.cfg.n_group) {
    EXPECT_LT(r.group, kInf);
  }
  if (expect_drops) {
    EXPECT_GT(stats.dropped, 0) << "the capacity test must actually drop assignments";
    EXPECT_LT(r.capacity, kInf);
  }
  return stats;
}

// Gradient check of the whole layer in double: every parameter and x, against
// L = <y, G> + balance_loss.
void grad_check(Layer& layer, uint64_t seed, bool expect_drops = false) {
  const int64_t N = layer.tokens(), D = layer.cfg.hidden_size;
  Tensor x = randn({N, D}, DType::F64, seed), G = randn({N, D}, DType::F64, seed + 1);
  assert_clear_routing(layer, x, expect_drops);
  auto loss = [&] { return layer.loss(x, G); };
  Tensor grad_x = randn({N, D}, DType::F64, seed + 2);  // garbage: backward must overwrite it
  EXPECT_TRUE(testing::check_param_grads(layer.params, loss, [&] { layer.backward(x, G, grad_x); }));
  layer.backward(x, G, grad_x);
  EXPECT_TRUE(testing::check_grad(x, grad_x, loss));
}

void fill_bias(Layer& layer, uint64_t seed, double std) {
  layer.moe.e_score_correction_bias().copy_from(
      randn({layer.cfg.n_routed_experts}, layer.ctx.dtype, seed, std));
}

// ---- gradient checks ------------------------------------------------------------------------------

TEST(MoE, GradCheckSigmoidBiasGroupsShared) {
  ModelConfig cfg = small_config();
  cfg.scoring_func = ScoreFunc::Sigmoid;
  cfg.aux_free_bias = true;
  cfg.n_group = 3;  // groups {0,1} {2,3} {4,5}, two kept
  cfg.topk_group = 2;
  cfg.n_shared_experts = 1;
  cfg.norm_topk_prob = true;
  cfg.routed_scaling_factor = 2.5;
  Layer layer(cfg, 2, 4, DType::F64, 11);
  fill_bias(layer, 12, 0.2);
  grad_check(layer, 100);
}

TEST(MoE, GradCheckSoftmaxBalanceLosses) {
  ModelConfig cfg = small_config();
  cfg.scoring_func = ScoreFunc::Softmax;
  cfg.norm_topk_prob = false;
  // Coefficients far above the recipe's, so that a wrong balance gradient shows over the tolerance.
  cfg.seq_aux_loss_alpha = 0.3;
  cfg.aux_loss_alpha = 0.2;
  cfg.router_z_loss_coef = 0.05;
  Layer layer(cfg, 2, 4, DType::F64, 21);
  grad_check(layer, 200);
}

TEST(MoE, GradCheckCapacityDrops) {
  ModelConfig cfg = small_config();
  cfg.n_routed_experts = 4;
  cfg.capacity_factor = 0.75;  // cap = ceil(0.75 * 8 * 2 / 4) = 3 of 4 assignments per expert on average
  cfg.n_shared_experts = 1;
  cfg.norm_topk_prob = true;  // the dropped experts' scores stay in the denominator
  cfg.routed_scaling_factor = 1.5;
  Layer layer(cfg, 1, 8, DType::F64, 31);
  grad_check(layer, 300, /*expect_drops=*/true);
}

TEST(MoE, GradCheckSharedExpertsOffAndOn) {
  for (int64_t shared : {0, 2}) {
    SCOPED_TRACE("n_shared_experts = " + std::to_string(shared));
    ModelConfig cfg = small_config();
    cfg.n_routed_experts = 4;
    cfg.n_shared_experts = shared;
    cfg.aux_free_bias = true;
    cfg.seq_aux_loss_alpha = 0.4;
    Layer layer(cfg, 2, 3, DType::F64, 41);
    fill_bias(layer, 42, 0.1);
    grad_check(layer, 400);
  }
}

// The shared experts add exactly SwiGLU_{n_shared * F}(x): the two layers share every routed
// weight (the shared experts are declared last, so the rest of the flat buffer is the same).
TEST(MoE, SharedExpertsAddTheirSwiGLU) {
  ModelConfig cfg = small_config();
  Layer off(cfg, 1, 5, DType::F64, 51);
  cfg.n_shared_experts = 2;
  Layer on(cfg, 1, 5, DType::F64, 51);
  ParamBuffer mlp_params;
  SwiGLUMLP mlp(mlp_params, "model.layers.1.mlp.shared_experts", cfg.hidden_size, 2 * cfg.moe_intermediate_size, 1.0);
  mlp_params.allocate(Device::CPU, DType::F64);
  for (const char* w : {"gate_proj", "up_proj", "down_proj"}) {
    const std::string name = std::string("model.layers.1.mlp.shared_experts.") + w + ".weight";
    mlp_params.param(name).copy_from(on.params.param(name));
  }
  Tensor x = randn({5, cfg.hidden_size}, DType::F64, 52);
  MoE::Saved s_off, s_on;
  MoEStats st;
  const Tensor y_off = off.forward(x, s_off, st).to(DType::F64);  // copies: the arena is reused
  const Tensor y_on = on.forward(x, s_on, st).to(DType::F64);
  Arena arena(1 << 20, Device::CPU);
  Context ctx{&arena, DType::F64, 1, 5};
  SwiGLUMLP::Saved ms;
  Tensor shared_y = ctx.alloc({5, cfg.hidden_size}), expected = ctx.alloc({5, cfg.hidden_size});
  mlp.forward(ctx, x, shared_y, ms);
  for (int64_t i = 0; i < expected.numel(); ++i)
    expected.data<double>()[i] = y_off.data<double>()[i] + shared_y.data<double>()[i];
  EXPECT_TRUE(testing::close(y_on, expected, 1e-12, 1e-12));
}

// ---- hand-worked routing --------------------------------------------------------------------------

double logit_of(double s) { return std::log(s / (1 - s)); }  // sigmoid^-1

// One token, x = e_0, so logits = column 0 of W_gate: the scores are set by hand.
struct OneToken {
  explicit OneToken(const ModelConfig& cfg, const std::vector<double>& scores)
      : layer(cfg, 1, 1, DType::F64, 61), x(Tensor::zeros({1, cfg.hidden_size}, DType::F64)) {
    x.data<double>()[0] = 1.0;
    const Tensor w = layer.params.param("model.layers.1.mlp.gate.weight");  // [E, D]
    for (int64_t e = 0; e < cfg.n_routed_experts; ++e)
      w.data<double>()[e * cfg.hidden_size] =
          cfg.scoring_func == ScoreFunc::Sigmoid ? logit_of(scores[e]) : std::log(scores[e]);
  }
  // {topk_idx, topk_weights} of the token.
  std::pair<std::vector<int>, std::vector<double>> route() {
    MoE::Saved s;
    MoEStats st;
    layer.forward(x, s, st);
    const int64_t K = layer.cfg.num_experts_per_tok;
    return {std::vector<int>(s.topk_idx.data<int32_t>(), s.topk_idx.data<int32_t>() + K),
            std::vector<double>(s.topk_weights.data<double>(), s.topk_weights.data<double>() + K)};
  }
  Layer layer;
  Tensor x;
};

TEST(MoE, HandWorkedSelectionAndGates) {
  ModelConfig cfg = small_config();
  cfg.n_routed_experts = 4;
  cfg.num_experts_per_tok = 2;
  cfg.norm_topk_prob = true;
  cfg.routed_scaling_factor = 2.5;
  OneToken t(cfg, {0.6, 0.2, 0.9, 0.5});
  auto [idx, w] = t.route();
  EXPECT_EQ(idx, (std::vector<int>{2, 0}));
  EXPECT_NEAR(w[0], 2.5 * 0.9 / 1.5, 1e-12);
  EXPECT_NEAR(w[1], 2.5 * 0.6 / 1.5, 1e-12);

  cfg.norm_topk_prob = false;  // g = s * scale
  OneToken u(cfg, {0.6, 0.2, 0.9, 0.5});
  std::tie(idx, w) = u.route();
  EXPECT_NEAR(w[0], 2.5 * 0.9, 1e-12);
  EXPECT_NEAR(w[1], 2.5 * 0.6, 1e-12);
}

TEST(MoE, BiasChangesSelectionNotGates) {
  ModelConfig cfg = small_config();
  cfg.n_routed_experts = 4;
  cfg.aux_free_bias = true;
  cfg.norm_topk_prob = true;
  cfg.routed_scaling_factor = 1.0;
  OneToken t(cfg, {0.6, 0.2, 0.9, 0.5});
  Tensor bias = t.layer.moe.e_score_correction_bias();
  const double b[] = {0.0, 0.0, 0.0, 0.3};  // expert 3: 0.5 + 0.3 = 0.8 beats expert 0's 0.6
  std::copy_n(b, 4, bias.data<double>());
  auto [idx, w] = t.route();
  EXPECT_EQ(idx, (std::vector<int>{2, 3}));
  EXPECT_NEAR(w[0], 0.9 / 1.4, 1e-12);  // unbiased scores: 0.9 and 0.5
  EXPECT_NEAR(w[1], 0.5 / 1.4, 1e-12);
}

TEST(MoE, GroupMaskingExcludesTheBestExpertOfALosingGroup) {
  ModelConfig cfg = small_config();
  cfg.n_routed_experts = 4;  // groups {0, 1} and {2, 3}, one kept
  cfg.n_group = 2;
  cfg.topk_group = 1;
  cfg.num_experts_per_tok = 2;
  const std::vector<double> s = {0.9, 0.1, 0.6, 0.55};
  // With the bias: group score = top-2 sum: 1.0 vs 1.15, so group {2, 3} wins and expert 0 (the
  // best score of all) is masked out.
  cfg.aux_free_bias = true;
  OneToken with_bias(cfg, s);
  EXPECT_EQ(with_bias.route().first, (std::vector<int>{2, 3}));
  // Without: group score = max: 0.9 vs 0.6, so group {0, 1} wins and expert 1 (0.1) is chosen
  // over experts 2 and 3.
  cfg.aux_free_bias = false;
  OneToken without(cfg, s);
  EXPECT_EQ(without.route().first, (std::vector<int>{0, 1}));
}

TEST(MoE, NodeLimitedRoutingKeepsTheBestNodes) {
  // 8 experts on 4 nodes of 2, K = 4, at most M = 2 nodes a token: a node scores the sum of its
  // top ceil(4/2) = 2 selection scores: 0.95, 1.0, 1.05, 0.2, so nodes 2 and 1 are kept and the
  // best expert of all (0, on node 0) is masked out. Ties (experts 2 and 3) go to the lower index.
  ModelConfig cfg = small_config();
  cfg.n_routed_experts = 8;
  cfg.num_experts_per_tok = 4;
  cfg.max_nodes_per_token = 2;
  cfg.expert_nodes = 4;
  const std::vector<double> s = {0.9, 0.05, 0.5, 0.5, 0.6, 0.45, 0.1, 0.1};
  OneToken limited(cfg, s);
  EXPECT_EQ(limited.route().first, (std::vector<int>{4, 2, 3, 5}));
  // Experts on no more nodes than M: no limit, the token takes experts on three nodes.
  cfg.expert_nodes = 2;
  OneToken within(cfg, s);
  EXPECT_EQ(within.route().first, (std::vector<int>{0, 4, 2, 3}));
  // Group-limited routing over the same 4 groups without a bias scores a group by its max (0.9,
  // 0.5, 0.6, 0.1): groups 0 and 2, where the node rule keeps nodes 2 and 1.
  cfg.expert_nodes = 1;
  cfg.max_nodes_per_token = 0;
  cfg.n_group = 4;
  cfg.topk_group = 2;
  OneToken groups(cfg, s);
  EXPECT_EQ(groups.route().first, (std::vector<int>{0, 4, 5, 1}));
}

TEST(MoE, NodeLimitedRoutingIsTheOpWithNodesAsGroups) {
  // A batch through the layer: its selection is moe_route_topk's with the nodes as groups and
  // ceil(K / M) summed per node, and no token reaches more than M nodes.
  ModelConfig cfg = small_config();
  cfg.n_routed_experts = 16;
  cfg.num_experts_per_tok = 5;
  cfg.aux_free_bias = true;
  cfg.max_nodes_per_token = 2;
  cfg.expert_nodes = 4;  // nodes of 4 experts, each scored by its top ceil(5/2) = 3
  Layer layer(cfg, 3, 8, DType::F32, 171);
  fill_bias(layer, 172, 0.1);
  const Tensor x = randn({layer.tokens(), cfg.hidden_size}, DType::F32, 173);
  MoE::Saved saved;
  MoEStats stats;
  layer.forward(x, saved, stats);
  const int64_t N = layer.tokens(), K = cfg.num_experts_per_tok;
  Tensor want = Tensor::empty({N, K}, DType::I32), unlimited = Tensor::empty({N, K}, DType::I32);
  moe_route_topk(Exec{}, saved.scores, layer.moe.e_score_correction_bias(), 4, 2, 3, want);
  moe_route_topk(Exec{}, saved.scores, layer.moe.e_score_correction_bias(), 1, 1, 0, unlimited);
  int64_t limited_tokens = 0;
  for (int64_t n = 0; n < N; ++n) {
    std::vector<bool> node(4, false), node_unlimited(4, false);
    for (int64_t k = 0; k < K; ++k) {
      EXPECT_EQ(saved.topk_idx.data<int32_t>()[n * K + k], want.data<int32_t>()[n * K + k]) << "token " << n;
      node[saved.topk_idx.data<int32_t>()[n * K + k] / 4] = true;
      node_unlimited[unlimited.data<int32_t>()[n * K + k] / 4] = true;
    }
    EXPECT_LE(std::count(node.begin(), node.end(), true), 2) << "token " << n;
    limited_tokens += std::count(node_unlimited.begin(), node_unlimited.end(), true) > 2;
  }
  EXPECT_GT(limited_tokens, 0) << "no token would have reached more than 2 nodes: the limit is not exercised";
}

TEST(MoE, TiesGoToTheLowerIndex) {
  ModelConfig cfg = small_config();
  cfg.n_routed_experts = 4;
  cfg.num_experts_per_tok = 2;
  OneToken t(cfg, {0.3, 0.7, 0.3, 0.7});
  EXPECT_EQ(t.route().first, (std::vector<int>{1, 3}));
  cfg.num_experts_per_tok = 3;
  OneToken u(cfg, {0.3, 0.7, 0.3, 0.7});
  EXPECT_EQ(u.route().first, (std::vector<int>{1, 3, 0}));
}

// Four tokens all choosing expert 0 (K = 1, E = 2, c = 1: cap = 2). Expert 0 keeps the two highest
// scores; tokens 1 and 3 tie, and the tie goes to the lower token.
TEST(MoE, CapacityKeepsTheHighestScores) {
  ModelConfig cfg = small_config();
  cfg.n_routed_experts = 2;
  cfg.num_experts_per_tok = 1;
  cfg.capacity_factor = 1.0;
  cfg.hidden_size = 4;
  Layer layer(cfg, 1, 4, DType::F64, 71);
  const Tensor w = layer.params.param("model.layers.1.mlp.gate.weight");  // [2, 4]
  const double wv[] = {1, 0, 0, 0,  /**/ -1, 0, 0, 0};  // logit_0 = x_0 = -logit_1
  std::copy_n(wv, 8, w.data<double>());
  Tensor x = randn({4, 4}, DType::F64, 72);
  const double x0[] = {0.5, 1.5, 2.0, 1.5};  // s_0 = sigmoid(x0): token 2 > tokens 1 = 3 > token 0
  for (int n = 0; n < 4; ++n) x.data<double>()[n * 4] = x0[n];
  MoE::Saved s;
  MoEStats st;
  const Tensor y = layer.forward(x, s, st);
  EXPECT_EQ(st.dropped, 2);
  EXPECT_EQ(st.load, (std::vector<double>{4, 0}));  // counted before the drops
  const std::vector<int> kept(s.expert_idx.data<int32_t>(), s.expert_idx.data<int32_t>() + 4);
  EXPECT_EQ(kept, (std::vector<int>{-1, 0, 0, -1}));
  for (int d = 0; d < 4; ++d) {  // no shared experts: a fully dropped token's output is 0
    EXPECT_EQ(y.data<double>()[0 * 4 + d], 0.0);
    EXPECT_EQ(y.data<double>()[3 * 4 + d], 0.0);
    EXPECT_NE(y.data<double>()[1 * 4 + d], 0.0);
  }
}

// ---- statistics, losses, bias update --------------------------------------------------------------

TEST(MoE, StatsLoadMaxVioAndBias) {
  ModelConfig cfg = small_config();
  cfg.aux_free_bias = true;
  Layer layer(cfg, 2, 5, DType::F64, 81);
  fill_bias(layer, 82, 0.1);
  const int64_t N = 10, E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  Tensor x = randn({N, cfg.hidden_size}, DType::F64, 83);
  MoE::Saved s;
  MoEStats st;
  layer.forward(x, s, st);
  ASSERT_EQ(static_cast<int64_t>(st.load.size()), E);
  EXPECT_EQ(std::accumulate(st.load.begin(), st.load.end(), 0.0), static_cast<double>(N * K));
  std::vector<double> counted(E, 0.0);  // from the saved selection
  for (int64_t i = 0; i < N * K; ++i) counted[s.topk_idx.data<int32_t>()[i]] += 1;
  EXPECT_EQ(st.load, counted);
  const double mean = static_cast<double>(N * K) / E;
  EXPECT_DOUBLE_EQ(st.max_vio, (*std::max_element(counted.begin(), counted.end()) - mean) / mean);
  EXPECT_EQ(st.dropped, 0);
  // The bias range is read at the log step, not by forward (which would copy the bias off the GPU).
  EXPECT_EQ(st.bias_min, 0.0);
  EXPECT_EQ(st.bias_max, 0.0);
  const double* b = layer.moe.e_score_correction_bias().data<double>();
  const auto [lo, hi] = layer.moe.bias_range();
  EXPECT_EQ(lo, *std::min_element(b, b + E));
  EXPECT_EQ(hi, *std::max_element(b, b + E));
  EXPECT_LT(lo, hi);  // random biases: the range is not a single value
  EXPECT_EQ(st.balance_loss(), 0.0);  // no balance loss configured
}

// The loads are counted before the capacity drops: the same routing with and without a capacity
// reports the same load.
TEST(MoE, LoadIsCountedBeforeDrops) {
  ModelConfig cfg = small_config();
  Layer dropless(cfg, 1, 8, DType::F64, 91);
  cfg.capacity_factor = 0.5;
  Layer capped(cfg, 1, 8, DType::F64, 91);
  Tensor x = randn({8, cfg.hidden_size}, DType::F64, 92);
  MoE::Saved s1, s2;
  MoEStats a, b;
  dropless.forward(x, s1, a);
  capped.forward(x, s2, b);
  EXPECT_GT(b.dropped, 0);
  EXPECT_EQ(a.load, b.load);
  EXPECT_EQ(a.max_vio, b.max_vio);
}

// The balance losses against plain loops over the saved scores, logits and selection.
TEST(MoE, BalanceLossValues) {
  ModelConfig cfg = small_config();
  cfg.scoring_func = ScoreFunc::Sigmoid;  // Z_t != 1: the normalisation of P matters
  cfg.seq_aux_loss_alpha = 0.3;
  cfg.aux_loss_alpha = 0.2;
  cfg.router_z_loss_coef = 0.05;
  const int64_t B = 3, T = 4, N = B * T, E = cfg.n_routed_experts, K = cfg.num_experts_per_tok;
  Layer layer(cfg, B, T, DType::F64, 101);
  Tensor x = randn({N, cfg.hidden_size}, DType::F64, 102);
  MoE::Saved s;
  MoEStats st;
  layer.forward(x, s, st);
  const double* sc = s.scores.data<double>();
  const double* lg = s.logits.data<double>();
  const int32_t* idx = s.topk_idx.data<int32_t>();
  // alpha * mean over sequences of sum_i f_i P_i, sequences of `len` rows.
  auto balance = [&](int64_t len, double alpha) {
    double total = 0;
    for (int64_t b0 = 0; b0 < N; b0 += len) {
      for (int64_t i = 0; i < E; ++i) {
        double count = 0, p = 0;
        for (int64_t t = b0; t < b0 + len; ++t) {
          for (int64_t k = 0; k < K; ++k) count += idx[t * K + k] == i;
          double z = 0;
          for (int64_t j = 0; j < E; ++j) z += sc[t * E + j];
          p += sc[t * E + i] / z / len;
        }
        total += static_cast<double>(E) / (K * len) * count * p;
      }
    }
    return alpha * total / (N / len);
  };
  double z = 0;
  for (int64_t t = 0; t < N; ++t) {
    double sum = 0;
    for (int64_t j = 0; j < E; ++j) sum += std::exp(lg[t * E + j]);
    z += std::log(sum) * std::log(sum) / N;
  }
  EXPECT_NEAR(st.seq_aux_loss, balance(T, 0.3), 1e-14);
  EXPECT_NEAR(st.aux_loss, balance(N, 0.2), 1e-14);
  EXPECT_NEAR(st.z_loss, 0.05 * z, 1e-14);
  EXPECT_NE(st.seq_aux_loss, st.aux_loss * 0.3 / 0.2);  // per-sequence f differs from the batch's
  EXPECT_DOUBLE_EQ(st.balance_loss(), st.seq_aux_loss + st.aux_loss + st.z_loss);
}

// backward's balance_grad_scale multiplies exactly the balance losses' part of the gradients.
TEST(MoE, BalanceGradScale) {
  ModelConfig cfg = small_config();
  cfg.seq_aux_loss_alpha = 0.3;
  cfg.router_z_loss_coef = 0.1;
  Layer layer(cfg, 2, 3, DType::F64, 111);
  const int64_t N = 6, D = cfg.hidden_size;
  Tensor x = randn({N, D}, DType::F64, 112), G = randn({N, D}, DType::F64, 113);
  auto grads = [&](double scale) {
    layer.params.zero_grads();
    Tensor gx = Tensor::empty({N, D}, DType::F64);
    layer.backward(x, G, gx, scale);
    return std::make_pair(layer.params.flat_grads().to(DType::F64), gx);
  };
  const auto [p0, x0] = grads(0.0);
  const auto [p1, x1] = grads(1.0);
  const auto [ph, xh] = grads(0.25);
  auto mix = [](const Tensor& a, const Tensor& b) {  // a + 0.25 * (b - a)
    Tensor m = Tensor::empty(a.shape(), DType::F64);
    for (int64_t i = 0; i < a.numel(); ++i)
      m.data<double>()[i] = a.data<double>()[i] + 0.25 * (b.data<double>()[i] - a.data<double>()[i]);
    return m;
  };
  EXPECT_TRUE(testing::close(ph, mix(p0, p1), 1e-14, 1e-12));
  EXPECT_TRUE(testing::close(xh, mix(x0, x1), 1e-14, 1e-12));
  EXPECT_FALSE(testing::close(p0, p1, 1e-10, 0));  // the balance terms do reach the router
}

// The loads as MoE::update_bias takes them: f64 [E] (on the CPU here).
Tensor f64_load(const std::vector<double>& values) {
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, DType::F64);
  std::copy(values.begin(), values.end(), t.data<double>());
  return t;
}

TEST(MoE, UpdateBiasMovesByGamma) {
  ModelConfig cfg = small_config();
  cfg.n_routed_experts = 4;
  cfg.aux_free_bias = true;
  cfg.bias_update_speed = 0.001;
  Layer layer(cfg, 1, 2, DType::F64, 121);
  fill_bias(layer, 122, 0.1);
  const Tensor bias = layer.moe.e_score_correction_bias();
  const Tensor before = bias.to(DType::F64);
  layer.moe.update_bias(layer.ctx, f64_load({3, 5, 4, 4}));  // mean 4: under, over, at, at
  const double* b0 = before.data<double>();
  const double* b1 = bias.data<double>();
  EXPECT_EQ(b1[0], b0[0] + 0.001);
  EXPECT_EQ(b1[1], b0[1] - 0.001);
  EXPECT_EQ(b1[2], b0[2]);
  EXPECT_EQ(b1[3], b0[3]);
  EXPECT_THROW(layer.moe.update_bias(layer.ctx, f64_load({1, 2, 3})), Error);  // E = 4 loads expected
  EXPECT_THROW(layer.moe.update_bias(layer.ctx, f64_load({1, 2, -3, 4})), Error);

  // An f32 bias (training) moves by the f32 gamma, as torch's in-place add does.
  Layer f32(cfg, 1, 2, DType::F32, 121);
  const Tensor before32 = before.to(DType::F32);
  f32.moe.e_score_correction_bias().copy_from(before32);
  f32.moe.update_bias(f32.ctx, f64_load({3, 5, 4, 4}));
  const float* c0 = before32.data<float>();
  const float* c1 = f32.moe.e_score_correction_bias().data<float>();
  EXPECT_EQ(c1[0], c0[0] + 0.001f);
  EXPECT_EQ(c1[1], c0[1] - 0.001f);
  EXPECT_EQ(c1[2], c0[2]);
}

// ---- implementations that must agree ----------------------------------------------------------------

// The naive per-token expert loop against the grouped (dispatched) path: same y, same gradients,
// with capacity drops, groups, the bias and shared experts all on.
TEST(MoE, NaiveAndGroupedAgree) {
  ModelConfig cfg = small_config();
  cfg.aux_free_bias = true;
  cfg.n_group = 3;
  cfg.topk_group = 2;
  cfg.n_shared_experts = 1;
  cfg.capacity_factor = 0.7;
  cfg.routed_scaling_factor = 2.0;
  cfg.seq_aux_loss_alpha = 0.1;
  Layer layer(cfg, 2, 5, DType::F64, 131);
  fill_bias(layer, 132, 0.1);
  const int64_t N = 10, D = cfg.hidden_size;
  Tensor x = randn({N, D}, DType::F64, 133), G = randn({N, D}, DType::F64, 134);
  auto run = [&](bool naive) {
    layer.moe.set_naive(naive);
    layer.params.zero_grads();
    MoE::Saved s;
    MoEStats st;
    Tensor y = layer.forward(x, s, st).to(DType::F64);
    EXPECT_GT(st.dropped, 0);
    Tensor gx = randn({N, D}, DType::F64, 135);
    layer.moe.backward(layer.ctx, s, G, 1.0, gx);
    return std::make_tuple(y, gx, layer.params.flat_grads().to(DType::F64));
  };
  const auto [y_naive, gx_naive, gp_naive] = run(true);
  const auto [y_grouped, gx_grouped, gp_grouped] = run(false);
  EXPECT_TRUE(testing::close(y_grouped, y_naive, 1e-13, 1e-12));
  EXPECT_TRUE(testing::close(gx_grouped, gx_naive, 1e-13, 1e-12));
  EXPECT_TRUE(testing::close(gp_grouped, gp_naive, 1e-13, 1e-12));
}

// The f32 layer (training) against the f64 one (checks) on the same weights and inputs.
TEST(MoE, FloatMatchesDouble) {
  ModelConfig cfg = small_config();
  cfg.aux_free_bias = true;
  cfg.n_group = 3;
  cfg.topk_group = 2;
  cfg.n_shared_experts = 1;
  cfg.routed_scaling_factor = 2.5;
  cfg.seq_aux_loss_alpha = 0.1;
  cfg.router_z_loss_coef = 0.01;
  const int64_t N = 8, D = cfg.hidden_size;
  Layer f64(cfg, 2, 4, DType::F64, 141), f32(cfg, 2, 4, DType::F32, 141);
  fill_bias(f64, 142, 0.2);
  f32.moe.e_score_correction_bias().copy_from(f64.moe.e_score_correction_bias().to(DType::F32));
  Tensor x = randn({N, D}, DType::F64, 145), G = randn({N, D}, DType::F64, 146);
  assert_clear_routing(f64, x);
  const Tensor x32 = x.to(DType::F32), G32 = G.to(DType::F32);
  MoE::Saved s64, s32;
  MoEStats st64, st32;
  const Tensor y64 = f64.forward(x, s64, st64).to(DType::F64), y32 = f32.forward(x32, s32, st32).to(DType::F64);
  EXPECT_TRUE(testing::close(y32, y64, 1e-5, 1e-5));
  EXPECT_NEAR(st32.balance_loss(), st64.balance_loss(), 1e-6);
  EXPECT_EQ(st32.load, st64.load);
  Tensor gx64 = Tensor::empty({N, D}, DType::F64), gx32 = Tensor::empty({N, D}, DType::F32);
  f64.backward(x, G, gx64);
  f32.backward(x32, G32, gx32);
  EXPECT_TRUE(testing::close(gx32, gx64, 1e-5, 1e-5));
  EXPECT_TRUE(testing::close(f32.params.flat_grads(), f64.params.flat_grads(), 1e-5, 1e-5));
}

TEST(MoE, BadShapesThrow) {
  ModelConfig cfg = small_config();
  Layer layer(cfg, 2, 3, DType::F64, 151);
  MoE::Saved s;
  Tensor y = Tensor::empty({6, cfg.hidden_size}, DType::F64);
  EXPECT_THROW(layer.moe.forward(layer.ctx, Tensor::empty({5, cfg.hidden_size}, DType::F64), y, s), Error);
  EXPECT_THROW(layer.moe.forward(layer.ctx, Tensor::empty({6, 7}, DType::F64), y, s), Error);
}

}  // namespace
}  // namespace moelab
