// Data and expert parallelism (dist/data_parallel.h, dist/ep_dispatch.h) against one process on the
// same global batch: N ranks
// each stepping on their B/N rows with DataParallel must reproduce the one-process step on all B
// rows (every rank computes that reference itself), for ZeRO-0 and ZeRO-1 with small buckets (many
// overlapped reductions), and the ranks' parameters must stay bit-identical.
//
// Tolerances: the gradients differ from one process's only in the order their f32 sums are taken
// (B/N rows per rank, then the mean over ranks, against B rows at once): ~1e-7 relative. AdamW's
// first steps move every weight by about lr whatever the gradient's size, so weights are compared
// at 1e-3 lr; losses (means of the same per-token values) at 1e-6 relative.
#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "dist/data_parallel.h"
#include "dist/ep_dispatch.h"
#include "tests/harness.h"
#include "tests/mpi/mpi_env.h"
#include "train/step.h"

namespace moelab {
namespace {

constexpr int64_t kB = 12, kT = 8;  // 12 rows: divisible by 2, 3 and 4 ranks

// The batch-level loss needs the whole batch's selections: the processes sum them in the forward.
ModelConfig tiny_config(bool batch_level_aux = false) {
  ModelConfig c = testing::tiny_moe_config();  // the seq-wise aux loss: a rank's rows are whole sequences
  if (batch_level_aux) c.aux_loss_alpha = 0.05;
  c.validate();
  return c;
}

struct Rig {
  explicit Rig(const ModelConfig& c) : model(c), arena(size_t{64} << 20, Device::CPU) {
    model.allocate(Device::CPU, DType::F32);
    model.initialize(7);
  }
  Context context(int64_t batch) { return Context{&arena, DType::F32, batch, kT, nullptr}; }
  Model model;
  Arena arena;
};

// The same global batch on every rank: seeded, and step s has its own.
Tensor global_batch(int step) { return testing::randint({kB, kT + 2}, 31, 100 + static_cast<uint64_t>(step)); }

// The step's reduced gradients of the ranges this rank owns, against the one-process gradients.
void expect_owned_grads_close(const dist::DataParallel& sync, const ParamBuffer& dp, const ParamBuffer& one, int step) {
  for (const OwnedRange& o : sync.owned())
    EXPECT_TRUE(testing::close(dp.flat_grads().slice(o.begin, o.end), one.flat_grads().slice(o.begin, o.end), 1e-6, 1e-4))
        << "step " << step << ": the gradients of [" << o.begin << ", " << o.end << ")";
}

// ep > 1: expert parallelism too (world = DP x EP): groups of ep consecutive ranks split the experts,
// the model's MoE layers dispatch through dist/ep_dispatch.h, and each rank reduces and updates only
// its own experts (over the ranks that hold the same ones). `steps` steps of the same global batch
// must give the one-process losses, gradients, norm, loads and weights within float rounding.
void run_and_compare(int zero, int64_t bucket_bytes, double grad_clip, bool batch_level_aux = false, int ep = 1,
                     int steps = 3) {
  dist::Comm& world = testing_mpi::world();
  const int N = world.size(), r = world.rank();
  if (N % ep != 0) GTEST_SKIP() << "expert parallelism over " << ep << " ranks needs a multiple of " << ep;
  const int64_t b = kB / N;
  StepConfig cfg;
  cfg.lr = 1e-3;
  cfg.grad_clip = grad_clip;

  Rig one(tiny_config(batch_level_aux));
  AdamW one_opt(one.model.params(), AdamWConfig{});

  Rig dp(tiny_config(batch_level_aux));
  std::unique_ptr<dist::Comm> ep_group, replicas;
  std::unique_ptr<dist::EPDispatch> ep_dispatch;
  dist::ExpertShards shards;
  if (ep > 1) {
    ep_group = world.split(r / ep, r, "ep");
    replicas = world.split(r % ep, r, "ep-replicas");
    ep_dispatch = std::make_unique<dist::EPDispatch>(*ep_group);
    dp.model.set_expert_dispatch(ep_dispatch.get());
    shards = {dp.model.expert_ranges(), ep_group.get(), replicas.get()};
  }
  dist::DataParallel sync(world, world, dp.model.params(), dist::DataParallelConfig{bucket_bytes, zero}, &shards);
  ASSERT_GT(sync.num_buckets(), 3) << "the test wants several buckets in flight";
  AdamW dp_opt(dp.model.params(), AdamWConfig{}, as_flat(sync.owned()));

  for (int step = 0; step < steps; ++step) {
    const Tensor tokens = global_batch(step);
    const StepStats a = train_step(one.model, one_opt, one.context(kB), cfg, [&] { return tokens; });
    const StepStats d =
        train_step(dp.model, dp_opt, dp.context(b), cfg, [&] { return tokens.slice(r * b, (r + 1) * b); }, &sync);
    ASSERT_TRUE(a.finite && d.finite);
    EXPECT_NEAR(d.losses.total, a.losses.total, 1e-6 * a.losses.total) << "step " << step;
    EXPECT_NEAR(d.losses.main, a.losses.main, 1e-6 * a.losses.main);
    EXPECT_NEAR(d.losses.seq_aux, a.losses.seq_aux, 1e-6 * a.losses.seq_aux + 1e-12);
    EXPECT_NEAR(d.losses.aux, a.losses.aux, 1e-6 * a.losses.aux + 1e-12);
    if (batch_level_aux) {
      EXPECT_GT(a.losses.aux, 0);
    }
    EXPECT_NEAR(d.grad_norm, a.grad_norm, 1e-5 * a.grad_norm) << "step " << step;
    EXPECT_EQ(d.loads, a.loads) << "the loads are counts: summed over ranks they are the global batch's";
    expect_owned_grads_close(sync, dp.model.params(), one.model.params(), step);
    sync.complete_params();  // the other EP ranks' experts, for the comparison
    EXPECT_TRUE(testing::close(dp.model.params().flat_params(), one.model.params().flat_params(), 1e-3 * cfg.lr, 1e-5))
        << "step " << step;
    EXPECT_TRUE(testing::close(dp.model.buffers().flat_params(), one.model.buffers().flat_params(), 0, 0))
        << "the bias follows the global loads";
  }
  EXPECT_NO_THROW(sync.check_identical(dp.model.buffers(), "after the steps"));
  // The checkpoint's view of the optimizer: every rank's moments whole, equal to one process's.
  EXPECT_TRUE(testing::close(sync.gather_full(dp_opt.m()), one_opt.m(), 1e-6, 1e-3));
  EXPECT_TRUE(testing::close(sync.gather_full(dp_opt.v()), one_opt.v(), 1e-9, 1e-3));
}

TEST(DataParallel, MatchesOneProcessZero0) { run_and_compare(0, 4096, 0.0); }
TEST(DataParallel, MatchesOneProcessZero0Clipped) { run_and_compare(0, 4096, 0.05); }
TEST(DataParallel, MatchesOneProcessZero1) { run_and_compare(1, 4096, 0.0); }
TEST(DataParallel, MatchesOneProcessZero1Clipped) { run_and_compare(1, 3000, 0.05); }

TEST(DataParallel, MatchesOneProcessWithTheBatchLevelAuxLoss) { run_and_compare(0, 4096, 0.0, true); }
// 4 experts: EP 2 (on 4 ranks: DP 2 x EP 2) and EP 4 (one expert per rank).
// Under mpirun -np 4, ep = 2 is DP 2 x EP 2.
TEST(ExpertParallel, Ep2MatchesOneProcessFor10Steps) { run_and_compare(0, 4096, 0.05, false, 2, 10); }
TEST(ExpertParallel, Ep2Zero1BatchLevelAuxMatchesOneProcessFor10Steps) { run_and_compare(1, 4096, 0.0, true, 2, 10); }
TEST(ExpertParallel, Ep4MatchesOneProcessFor10Steps) { run_and_compare(0, 4096, 0.0, false, 4, 10); }

TEST(DataParallel, Zero1ShardsTheOptimizerState) {
  dist::Comm& world = testing_mpi::world();
  Rig dp(tiny_config());
  dist::DataParallel sync(world, world, dp.model.params(), dist::DataParallelConfig{4096, 1});
  AdamW opt(dp.model.params(), AdamWConfig{}, as_flat(sync.owned()));
  const int64_t n = dp.model.params().numel_padded(), N = world.size();
  // Each rank keeps about 1/N of m (each bucket split in N near-equal slices).
  EXPECT_LE(opt.m().numel(), n / N + sync.num_buckets());
  std::vector<double> total = {static_cast<double>(opt.m().numel())};
  world.all_reduce(total, dist::ReduceOp::Sum);
  EXPECT_EQ(total[0], static_cast<double>(n)) << "the shards cover the buffer exactly once";
  // gather_full puts every rank's slices back in the flat layout.
  Tensor shard = Tensor::empty({opt.m().numel()}, DType::F32);
  int64_t at = 0;
  for (const FlatRange& range : sync.owned())
    for (int64_t i = range.begin; i < range.end; ++i) shard.data<float>()[at++] = static_cast<float>(i);
  const Tensor full = sync.gather_full(shard);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(full.data<float>()[i], static_cast<float>(i));
}

TEST(DataParallel, DivergedRanksAreCaught) {
  dist::Comm& world = testing_mpi::world();
  Rig dp(tiny_config());
  dist::DataParallel sync(world, world, dp.model.params(), dist::DataParallelConfig{4096, 0});
  EXPECT_NO_THROW(sync.check_identical(dp.model.buffers(), "at the start"));
  if (world.rank() == world.size() - 1) dp.model.params().flat_params().data<float>()[5] += 1e-6f;
  try {
    sync.check_identical(dp.model.buffers(), "after a bad step");
    FAIL() << "expected the divergence to be caught";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank(s) " + std::to_string(world.size() - 1) + " differ from rank 0's after "
                                         "a bad step"),
              std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace moelab
