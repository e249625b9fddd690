// train/parallel.h's arithmetic: the per-process memory prediction (ZeRO-1, expert parallelism) and
// each process's share of the batch. tests/mpi/test_data_parallel.cpp checks the prediction of the
// optimizer state against what an expert-parallel run's AdamW really holds.
#include <gtest/gtest.h>

#include "tests/harness.h"
#include "train/parallel.h"

namespace moelab {
namespace {

TEST(RankMemory, ShardsTheOptimizerStateByZeroAndByExpertParallelism) {
  const int64_t n = 1000, experts = 600;
  const RankMemory one = rank_memory(n, 50, 1, 0, false);
  EXPECT_EQ(one.params, 4000);
  EXPECT_EQ(one.grads, 4000);
  EXPECT_EQ(one.compute_copy, 0);
  EXPECT_EQ(one.optimizer, 8000);
  EXPECT_EQ(one.total(), 16050);
  EXPECT_EQ(rank_memory(n, 0, 4, 1, true).compute_copy, 2000);
  EXPECT_EQ(rank_memory(n, 0, 4, 1, false).optimizer, 2000);            // ZeRO-1: 1/4 of everything
  EXPECT_EQ(rank_memory(n, 0, 4, 0, false, experts, 2).optimizer, 8 * (400 + 300));  // EP 2: half the experts
  EXPECT_EQ(rank_memory(n, 0, 4, 1, false, experts, 4).optimizer, 8 * (100 + 150));  // both
  EXPECT_EQ(rank_memory(n, 0, 4, 0, false, experts, 1).optimizer, 8000);  // ep = 1: experts count whole
  const std::string s = format_rank_memory(rank_memory(n, 0, 4, 1, false, experts, 4), 4, 1, 4);
  EXPECT_NE(s.find("(ZeRO-1: 1/4)"), std::string::npos) << s;
  EXPECT_NE(s.find("(routed experts: 1/4)"), std::string::npos) << s;
}

TEST(PerRankBatch, SplitsOrNamesTheKey) {
  EXPECT_EQ(per_rank_batch(16, 4, "train.batch_size"), 4);
  testing::expect_error([] { per_rank_batch(10, 4, "train.batch_size"); },
                        "train.batch_size = 10 is not divisible by the 4 processes");
}

}  // namespace
}  // namespace moelab
