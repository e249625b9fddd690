// Expert parallelism's dispatch and combine (dist/ep_dispatch.h) against the one-process dispatch:
// every rank builds the same global batch (tokens, selections with some dropped slots, weights,
// output gradients), runs it whole through LocalExpertDispatch with all experts, and its own slice
// through EPDispatch with only its experts; y, grad_x and grad_topk_weights must agree (f64: only
// the order of a token's sum over ranks differs), and the rows each rank moves must be exactly one
// per (token, other rank) pair, each way.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <set>

#include "core/ops/elementwise.h"
#include "core/ops/fp8_quant.h"
#include "dist/backends.h"
#include "dist/ep_dispatch.h"
#include "tests/harness.h"
#include "tests/mpi/mpi_env.h"

namespace moelab {
namespace {

constexpr int64_t kPerRank = 7, kE = 12, kK = 3, kD = 5;  // 12 experts: 2, 3 or 4 ranks split them evenly

// Expert e is an elementwise affine map, y = a_e x + b_e: its backward is grad_x = a_e grad_y.
double scale_of(int64_t e) { return 0.5 + 0.25 * static_cast<double>(e); }
double shift_of(int64_t e) { return 0.1 * static_cast<double>(e); }

// Runs the local experts on their rows of expert_x (grouped by chunk, then expert).
Tensor run_experts(const Tensor& expert_x, const DispatchLayout& layout, bool backward) {
  const int64_t D = expert_x.size(1);
  Tensor out = Tensor::empty(expert_x.shape(), DType::F64);
  int64_t row = 0;
  for (const DispatchLayout::Chunk& chunk : layout.chunks)
    for (size_t i = 0; i < chunk.rows_per_expert.size(); ++i) {
      const int64_t e = layout.first_expert + static_cast<int64_t>(i);
      for (int64_t r = 0; r < chunk.rows_per_expert[i]; ++r, ++row)
        for (int64_t d = 0; d < D; ++d) {
          const double v = expert_x.data<double>()[row * D + d];
          out.data<double>()[row * D + d] = backward ? scale_of(e) * v : scale_of(e) * v + shift_of(e);
        }
    }
  return out;
}

// K distinct experts per token; every 4th token drops one slot and token 5 drops them all.
Tensor selections(int64_t N, uint64_t seed) {
  const Tensor r = testing::randn({N, kE}, DType::F64, seed);
  Tensor idx = Tensor::empty({N, kK}, DType::I32);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<int32_t> order(kE);
    for (int32_t e = 0; e < kE; ++e) order[static_cast<size_t>(e)] = e;
    const double* v = r.data<double>() + n * kE;
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return v[a] > v[b]; });
    for (int64_t k = 0; k < kK; ++k) idx.data<int32_t>()[n * kK + k] = order[static_cast<size_t>(k)];
    if (n % 4 == 3) idx.data<int32_t>()[n * kK + 1] = -1;
    if (n == 5)
      for (int64_t k = 0; k < kK; ++k) idx.data<int32_t>()[n * kK + k] = -1;
  }
  return idx;
}

struct Result {
  Tensor y, grad_x, grad_w;
  std::shared_ptr<const DispatchLayout> layout;
};

// The whole round trip through d with affine experts. counted: the dispatch's group, whose bytes
// during the dispatch() call alone go to *dispatch_bytes.
Result run(const ExpertDispatch& d, const Context& ctx, const Tensor& x, const Tensor& idx, const Tensor& w,
           const Tensor& grad_y, dist::Comm* counted = nullptr, int64_t* dispatch_bytes = nullptr) {
  Result r;
  r.layout = d.layout(ctx, idx, w, kE);
  const int64_t M = r.layout->rows(), N = x.size(0), D = x.size(1);
  Tensor expert_x = Tensor::empty({M, D}, DType::F64);
  const int64_t before = counted ? counted->counters().total_bytes() : 0;
  d.dispatch(ctx, *r.layout, x, expert_x);
  if (counted) *dispatch_bytes = counted->counters().total_bytes() - before;
  const Tensor expert_y = run_experts(expert_x, *r.layout, false);
  r.y = Tensor::empty({N, D}, DType::F64);
  d.combine(ctx, *r.layout, expert_y, r.y);
  Tensor grad_expert_y = Tensor::empty({M, D}, DType::F64);
  r.grad_w = Tensor::empty({N, kK}, DType::F64);
  d.combine_backward(ctx, *r.layout, grad_y, expert_y, grad_expert_y, r.grad_w);
  const Tensor grad_expert_x = run_experts(grad_expert_y, *r.layout, true);
  r.grad_x = Tensor::empty({N, D}, DType::F64);
  d.dispatch_backward(ctx, *r.layout, grad_expert_x, r.grad_x);
  return r;
}

void check_matches_one_process(dist::Comm& world) {
  const int R = world.size(), me = world.rank();
  const int64_t Ng = kPerRank * R, first = me * kPerRank;
  const Tensor x = testing::randn({Ng, kD}, DType::F64, 11), idx = selections(Ng, 12);
  const Tensor w = testing::rand_uniform({Ng, kK}, DType::F64, 13, 0.1f, 1.0f);
  const Tensor grad_y = testing::randn({Ng, kD}, DType::F64, 14);
  Arena arena(size_t{16} << 20, Device::CPU);
  const Context ctx(&arena, DType::F64, 1, 1);

  const Result whole = run(LocalExpertDispatch{}, ctx, x, idx, w, grad_y);
  const dist::EPDispatch ep(world);
  const Tensor mine_idx = idx.slice(first, first + kPerRank);
  const Result part = run(ep, ctx, x.slice(first, first + kPerRank), mine_idx, w.slice(first, first + kPerRank),
                          grad_y.slice(first, first + kPerRank));

  EXPECT_EQ(part.layout->first_expert, me * (kE / R));
  ASSERT_EQ(static_cast<int64_t>(part.layout->num_tokens_per_expert.size()), kE / R);
  for (int64_t i = 0; i < kE / R; ++i)
    EXPECT_EQ(part.layout->num_tokens_per_expert[static_cast<size_t>(i)],
              whole.layout->num_tokens_per_expert[static_cast<size_t>(part.layout->first_expert + i)])
        << "rows of expert " << part.layout->first_expert + i << ": every rank's tokens for it";
  EXPECT_TRUE(testing::close(part.y, whole.y.slice(first, first + kPerRank), 1e-13, 1e-13)) << "y";
  EXPECT_TRUE(testing::close(part.grad_x, whole.grad_x.slice(first, first + kPerRank), 1e-13, 1e-13)) << "grad_x";
  EXPECT_TRUE(testing::close(part.grad_w, whole.grad_w.slice(first, first + kPerRank), 1e-13, 1e-13)) << "grad_w";
  if (first <= 5 && 5 < first + kPerRank) {  // token 5 has every slot dropped
    for (int64_t d = 0; d < kD; ++d) EXPECT_EQ(part.y.data<double>()[(5 - first) * kD + d], 0.0);
  }
}

// The world group as emulated nodes of 2 ranks ({0, 1}, {2, 3}; with 3 ranks {0, 1}, {2}): the
// dispatch takes two hops across nodes (dist/ep_dispatch.h, "Nodes").
std::unique_ptr<dist::Comm> two_rank_nodes() {
  dist::CommOptions o;
  o.timeout_s = 120;
  o.ranks_per_node = 2;
  o.name = "nodes";
  return dist::mpi_world(o);
}

TEST(EPDispatch, MatchesTheOneProcessDispatch) { check_matches_one_process(testing_mpi::world()); }
TEST(EPDispatch, MatchesTheOneProcessDispatchAcrossNodes) { check_matches_one_process(*two_rank_nodes()); }

// Only dispatch(), exactly: the bytes this rank sends are its (token, other rank) pairs x D x 8.
TEST(EPDispatch, DispatchBytesAreTheMinimum) {
  dist::Comm& world = testing_mpi::world();
  const int R = world.size(), me = world.rank();
  const int64_t first = me * kPerRank;
  const Tensor idx = selections(kPerRank * R, 21).slice(first, first + kPerRank);
  const Tensor x = testing::randn({kPerRank, kD}, DType::F64, 22 + static_cast<uint64_t>(me));
  Arena arena(size_t{16} << 20, Device::CPU);
  const Context ctx(&arena, DType::F64, 1, 1);
  const dist::EPDispatch ep(world);
  const auto layout = ep.layout(ctx, idx, Tensor::zeros(idx.shape(), DType::F64), kE);
  Tensor expert_x = Tensor::empty({layout->rows(), kD}, DType::F64);
  const int64_t before = world.counters().total_bytes();
  ep.dispatch(ctx, *layout, x, expert_x);
  const int64_t moved = world.counters().total_bytes() - before;
  int64_t pairs = 0, assignments = 0;
  for (int64_t n = 0; n < kPerRank; ++n) {
    std::set<int64_t> ranks;
    for (int64_t k = 0; k < kK; ++k) {
      const int32_t e = idx.data<int32_t>()[n * kK + k];
      if (e < 0 || e / (kE / R) == me) continue;
      ranks.insert(e / (kE / R));
      ++assignments;
    }
    pairs += static_cast<int64_t>(ranks.size());
  }
  EXPECT_EQ(moved, pairs * kD * 8) << "one row per (token, other rank), not one per assignment (" << assignments << ")";
}

// Across nodes, only dispatch(), exactly: a token crosses to another node once (to the proxy), so
// this rank's inter-node bytes are its (token, other node) pairs x D x 8; its intra-node bytes are
// its (token, other rank on this node) pairs plus what it forwards as the proxy of other nodes'
// tokens (to the ranks of its node, itself excepted, that hold their experts).
TEST(EPDispatch, AcrossNodesATokenCrossesOncePerNode) {
  const std::unique_ptr<dist::Comm> nodes = two_rank_nodes();
  const int R = nodes->size(), me = nodes->rank();
  if (R < 3) GTEST_SKIP() << "needs ranks on two nodes of 2";
  auto node = [](int r) { return r / 2; };
  auto proxy = [&](int to_node, int source) {  // the rank of to_node with the source's place in its node
    const int first = 2 * to_node, size = std::min(2, R - first);
    return first + (source % 2) % size;
  };
  const Tensor all_idx = selections(kPerRank * R, 41);
  const int64_t first = me * kPerRank;
  const Tensor x = testing::randn({kPerRank, kD}, DType::F64, 42 + static_cast<uint64_t>(me));
  Arena arena(size_t{16} << 20, Device::CPU);
  const Context ctx(&arena, DType::F64, 1, 1);
  const dist::EPDispatch ep(*nodes);
  const auto layout = ep.layout(ctx, all_idx.slice(first, first + kPerRank),
                                Tensor::zeros({kPerRank, kK}, DType::F64), kE);
  Tensor expert_x = Tensor::empty({layout->rows(), kD}, DType::F64);
  const dist::CommCounters before = nodes->counters();
  ep.dispatch(ctx, *layout, x, expert_x);
  const dist::CommCounters after = nodes->counters();
  int64_t inter = 0, intra = 0;
  for (int64_t n = 0; n < kPerRank * R; ++n) {
    const int src = static_cast<int>(n / kPerRank);
    std::set<int> ranks, other_nodes;
    for (int64_t k = 0; k < kK; ++k) {
      const int32_t e = all_idx.data<int32_t>()[n * kK + k];
      if (e >= 0) ranks.insert(static_cast<int>(e / (kE / R)));
    }
    for (int r : ranks) {
      if (src == me && r != me && node(r) == node(me)) ++intra;  // direct, on this node
      if (node(r) != node(src)) other_nodes.insert(node(r));
    }
    if (src == me) inter += static_cast<int64_t>(other_nodes.size());
    // This rank as the proxy of a token from another node: it forwards to the others holding experts.
    if (node(src) != node(me) && other_nodes.count(node(me)) && proxy(node(me), src) == me)
      for (int r : ranks)
        if (r != me && node(r) == node(me)) ++intra;
  }
  EXPECT_EQ(after.bytes[1] - before.bytes[1], inter * kD * 8) << "one row per (token, other node)";
  EXPECT_EQ(after.bytes[0] - before.bytes[0], intra * kD * 8) << "direct rows and the proxies' forwards";
  EXPECT_GT(inter, 0);
}

// A narrower wire: the experts see the ROUNDED x (bf16, or fp8 e4m3 with a scale per 128 channels:
// the rounding is row-local, so it commutes with the dispatch), and the gradients pass straight
// through: y, grad_x and grad_topk_weights are the one-process dispatch's on the rounded x. And the
// dispatch's bytes are the wire's: 2 per element for bf16, 1 plus a 4-byte scale per block of 128
// for fp8.
void check_wire(DType wire, dist::Comm& world, bool count_bytes) {
  const int R = world.size(), me = world.rank();
  constexpr int64_t D = 200;  // two fp8 blocks, the second partial
  const int64_t Ng = kPerRank * R, first = me * kPerRank;
  const Tensor x = testing::randn({Ng, D}, DType::F64, 31), idx = selections(Ng, 32);
  const Tensor w = testing::rand_uniform({Ng, kK}, DType::F64, 33, 0.1f, 1.0f);
  const Tensor grad_y = testing::randn({Ng, D}, DType::F64, 34);
  Arena arena(size_t{32} << 20, Device::CPU);
  const Context ctx(&arena, DType::F64, 1, 1);
  Tensor rounded = Tensor::empty({Ng, D}, DType::F64);
  if (wire == DType::BF16) {
    const Tensor b = Tensor::empty({Ng, D}, DType::BF16);
    cast(ctx, x, b);
    cast(ctx, b, rounded);
  } else {
    const Tensor q = Tensor::empty({Ng, D}, DType::FP8_E4M3), scales = Tensor::empty({Ng, fp8_num_blocks(D)}, DType::F32);
    fp8_quantize(ctx, x, q, scales);
    fp8_dequantize(ctx, q, scales, rounded);
  }
  const Result whole = run(LocalExpertDispatch{}, ctx, rounded, idx, w, grad_y);
  const dist::EPDispatch ep(world, wire);
  int64_t dispatch_bytes = 0;
  if (!count_bytes) {  // two hops: the proxies forward the rounded rows in x's dtype
    const Result part = run(ep, ctx, x.slice(first, first + kPerRank), idx.slice(first, first + kPerRank),
                            w.slice(first, first + kPerRank), grad_y.slice(first, first + kPerRank));
    EXPECT_TRUE(testing::close(part.y, whole.y.slice(first, first + kPerRank), 1e-12, 1e-12)) << dtype_name(wire);
    EXPECT_TRUE(testing::close(part.grad_x, whole.grad_x.slice(first, first + kPerRank), 1e-12, 1e-12));
    EXPECT_TRUE(testing::close(part.grad_w, whole.grad_w.slice(first, first + kPerRank), 1e-12, 1e-12));
    return;
  }
  const Result part = run(ep, ctx, x.slice(first, first + kPerRank), idx.slice(first, first + kPerRank),
                          w.slice(first, first + kPerRank), grad_y.slice(first, first + kPerRank), &world,
                          &dispatch_bytes);
  EXPECT_TRUE(testing::close(part.y, whole.y.slice(first, first + kPerRank), 1e-12, 1e-12)) << dtype_name(wire);
  EXPECT_TRUE(testing::close(part.grad_x, whole.grad_x.slice(first, first + kPerRank), 1e-12, 1e-12));
  EXPECT_TRUE(testing::close(part.grad_w, whole.grad_w.slice(first, first + kPerRank), 1e-12, 1e-12));

  int64_t pairs = 0;
  for (int64_t n = first; n < first + kPerRank; ++n) {
    std::set<int64_t> ranks;
    for (int64_t k = 0; k < kK; ++k) {
      const int32_t e = idx.data<int32_t>()[n * kK + k];
      if (e >= 0 && e / (kE / R) != me) ranks.insert(e / (kE / R));
    }
    pairs += static_cast<int64_t>(ranks.size());
  }
  const int64_t row_bytes = wire == DType::BF16 ? 2 * D : D + 4 * fp8_num_blocks(D);
  EXPECT_EQ(dispatch_bytes, pairs * row_bytes) << dtype_name(wire);
}

TEST(EPDispatch, Bf16WireSendsTheRoundedRowsInHalfTheBytes) { check_wire(DType::BF16, testing_mpi::world(), true); }
TEST(EPDispatch, Fp8WireSendsTheQuantisedRowsAndTheirScales) {
  check_wire(DType::FP8_E4M3, testing_mpi::world(), true);
}
TEST(EPDispatch, Fp8WireAcrossNodesMatchesTheRoundedRows) { check_wire(DType::FP8_E4M3, *two_rank_nodes(), false); }

}  // namespace
}  // namespace moelab
