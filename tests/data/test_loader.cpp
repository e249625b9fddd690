// The loader: deterministic batches from the seed, windows inside one shard, uniform random starts,
// rank slices that add up to the single-rank global batch, every window once per sequential epoch,
// and save/restore of the position continuing with exactly the same batches.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "data/loader.h"
#include "tests/data/data_test_util.h"
#include "tests/harness.h"

namespace moelab {
namespace {

using testing::expect_error;

// Three shards whose tokens say where they are: token i of shard k is k * 100000 + i, so a row's
// first token names its shard and start. The middle shard is shorter than a window.
constexpr int64_t kVocab = 300000;
constexpr int64_t kW = 17;
const std::vector<int64_t> kSizes = {1000, 10, 2503};

struct Fixture {
  std::string dir;
  std::vector<std::string> shards;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    Fixture f;
    f.dir = testing::scratch_dir("loader");
    for (size_t k = 0; k < kSizes.size(); ++k) {
      std::vector<int32_t> toks(static_cast<size_t>(kSizes[k]));
      for (int64_t i = 0; i < kSizes[k]; ++i) toks[i] = static_cast<int32_t>(k * 100000 + i);
      f.shards.push_back(f.dir + "/shard_" + std::to_string(k) + ".bin");
      write_shard(f.shards.back(), toks, kVocab);
    }
    return f;
  }();
  return f;
}

LoaderConfig config(LoaderMode mode, int64_t batch, uint64_t seed = 1234, int rank = 0, int world = 1) {
  LoaderConfig c;
  c.shards = fixture().shards;
  c.vocab_size = kVocab;
  c.batch_size = batch;
  c.window = kW;
  c.mode = mode;
  c.seed = seed;
  c.rank = rank;
  c.world_size = world;
  return c;
}

std::vector<int32_t> values(const Tensor& t) { return {t.data<int32_t>(), t.data<int32_t>() + t.numel()}; }

std::vector<std::vector<int32_t>> run(Loader& l, int steps) {
  std::vector<std::vector<int32_t>> out;
  for (int s = 0; s < steps; ++s) out.push_back(values(l.next()));
  return out;
}

// The first token of every row, after checking the row is W consecutive tokens of one shard.
std::vector<int32_t> row_starts(const Tensor& batch) {
  EXPECT_EQ(batch.dtype(), DType::I32);
  EXPECT_EQ(batch.shape(), (Shape{batch.size(0), kW}));
  std::vector<int32_t> starts;
  const int32_t* p = batch.data<int32_t>();
  for (int64_t b = 0; b < batch.size(0); ++b) {
    const int32_t first = p[b * kW];
    const int64_t shard = first / 100000, offset = first % 100000;
    EXPECT_LT(shard, 3);
    EXPECT_LE(offset + kW, kSizes[shard]) << "window runs past the end of shard " << shard;
    for (int64_t j = 0; j < kW; ++j) EXPECT_EQ(p[b * kW + j], first + j) << "row " << b << " is not contiguous";
    starts.push_back(first);
  }
  return starts;
}

TEST(Loader, RandomModeIsDeterministicFromSeedAndStep) {
  Loader a(config(LoaderMode::Random, 5)), b(config(LoaderMode::Random, 5)), c(config(LoaderMode::Random, 5, 99));
  EXPECT_EQ(a.num_windows(), (1000 - kW + 1) + (2503 - kW + 1));
  EXPECT_EQ(a.num_tokens(), 1000 + 10 + 2503);
  const auto ra = run(a, 20), rb = run(b, 20), rc = run(c, 20);
  EXPECT_EQ(ra, rb);
  EXPECT_NE(ra, rc);
  // Batch s depends on nothing but the seed and s: a loader jumped to step 7 serves batch 7.
  Loader d(config(LoaderMode::Random, 5));
  d.set_position({0, 0, 7});
  EXPECT_EQ(values(d.next()), ra[7]);
  for (int s = 0; s < 20; ++s) row_starts(a.next());
}

TEST(Loader, RandomStartsAreUniformOverAllWindows) {
  Loader l(config(LoaderMode::Random, 16));
  std::vector<int64_t> per_shard(3, 0);
  std::set<int32_t> distinct;
  const int steps = 1000;
  for (int s = 0; s < steps; ++s)
    for (int32_t start : row_starts(l.next())) {
      ++per_shard[start / 100000];
      distinct.insert(start);
    }
  const double n = 16.0 * steps, total = static_cast<double>(l.num_windows());
  EXPECT_EQ(per_shard[1], 0);  // shorter than a window
  for (int k : {0, 2}) {
    const double p = (kSizes[k] - kW + 1) / total, expected = n * p, sigma = std::sqrt(n * p * (1 - p));
    std::printf("[ loader   ] shard %d: %lld rows, expected %.0f +- %.0f\n", k, static_cast<long long>(per_shard[k]),
                expected, sigma);
    EXPECT_LT(std::abs(per_shard[k] - expected), 5 * sigma);
  }
  // 16000 draws from 3471 starts leave about 3471 * exp(-16000 / 3471) = 35 unseen.
  EXPECT_GT(distinct.size(), 3300u);
}

TEST(Loader, RanksTakeTheirSliceOfTheGlobalBatch) {
  for (const LoaderMode mode : {LoaderMode::Random, LoaderMode::Sequential}) {
    SCOPED_TRACE(loader_mode_name(mode));
    const int R = 3, B = 4;
    Loader global(config(mode, R * B));
    std::vector<Loader> ranks;
    for (int r = 0; r < R; ++r) ranks.emplace_back(config(mode, B, 1234, r, R));
    for (int step = 0; step < 40; ++step) {
      const std::vector<int32_t> g = values(global.next());
      std::set<int32_t> starts_this_step;
      for (int r = 0; r < R; ++r) {
        const Tensor t = ranks[r].next();
        ASSERT_EQ(values(t), std::vector<int32_t>(g.begin() + r * B * kW, g.begin() + (r + 1) * B * kW))
            << "rank " << r << " step " << step;
        for (int32_t s : row_starts(t)) starts_this_step.insert(s);
      }
      // Sequential windows of one epoch are distinct, so the ranks' rows are disjoint (a batch that
      // runs into the next epoch may meet a window again).
      if (mode == LoaderMode::Sequential && ranks[0].position().index >= R * B) {
        EXPECT_EQ(starts_this_step.size(), static_cast<size_t>(R * B)) << "step " << step;
      }
    }
    for (const Loader& l : ranks) EXPECT_EQ(l.position(), global.position());
  }
}

TEST(Loader, SequentialModeServesEveryWindowOncePerEpoch) {
  const int B = 7;
  Loader l(config(LoaderMode::Sequential, B));
  const int64_t N = l.num_windows();
  EXPECT_EQ(N, 1000 / kW + 0 + 2503 / kW);
  std::set<int32_t> all;  // every non-overlapping window: starts 0, W, 2W, ... in shards 0 and 2
  for (int64_t k = 0; k < 1000 / kW; ++k) all.insert(static_cast<int32_t>(k * kW));
  for (int64_t k = 0; k < 2503 / kW; ++k) all.insert(static_cast<int32_t>(200000 + k * kW));

  std::vector<int32_t> order;
  const int steps = static_cast<int>((3 * N + B - 1) / B);
  for (int s = 0; s < steps; ++s) {
    for (int32_t start : row_starts(l.next())) order.push_back(start);
    EXPECT_EQ(l.position().epoch * N + l.position().index, (s + 1) * B);
  }
  for (int e = 0; e < 3; ++e) {
    const std::vector<int32_t> epoch(order.begin() + e * N, order.begin() + (e + 1) * N);
    EXPECT_EQ(std::set<int32_t>(epoch.begin(), epoch.end()), all) << "epoch " << e;
  }
  EXPECT_NE(std::vector<int32_t>(order.begin(), order.begin() + N),
            std::vector<int32_t>(order.begin() + N, order.begin() + 2 * N))
      << "each epoch is shuffled anew";

  // Without shuffling: file order, e.g. for a validation pass.
  LoaderConfig c = config(LoaderMode::Sequential, B);
  c.shuffle = false;
  Loader plain(c);
  std::vector<int32_t> in_order;
  for (int s = 0; s < (N + B - 1) / B; ++s)
    for (int32_t start : row_starts(plain.next())) in_order.push_back(start);
  in_order.resize(static_cast<size_t>(N));
  EXPECT_EQ(in_order, std::vector<int32_t>(all.begin(), all.end()));
}

TEST(Loader, SavedPositionContinuesWithTheSameBatches) {
  for (const LoaderMode mode : {LoaderMode::Random, LoaderMode::Sequential}) {
    SCOPED_TRACE(loader_mode_name(mode));
    Loader a(config(mode, 12));
    run(a, 37);  // past the end of the first sequential epoch (205 windows)
    // Through text, as a checkpoint stores it.
    const std::string saved = a.state_json().dump();
    const auto expected = run(a, 25);

    Loader b(config(mode, 12));
    b.restore(nlohmann::ordered_json::parse(saved));
    EXPECT_EQ(b.position().step, 37);
    EXPECT_EQ(run(b, 25), expected);

    // The same global batch split over two ranks continues the same rows.
    Loader r0(config(mode, 6, 1234, 0, 2)), r1(config(mode, 6, 1234, 1, 2));
    r0.restore(nlohmann::ordered_json::parse(saved));
    r1.restore(nlohmann::ordered_json::parse(saved));
    std::vector<int32_t> joined = values(r0.next());
    const std::vector<int32_t> second = values(r1.next());
    joined.insert(joined.end(), second.begin(), second.end());
    EXPECT_EQ(joined, expected[0]);

    // A loader whose batches would differ refuses the state.
    Loader other_seed(config(mode, 12, 4321));
    expect_error([&] { other_seed.restore(nlohmann::ordered_json::parse(saved)); },
                 "seed is 1234 in the saved state but 4321 in this loader");
    Loader other_batch(config(mode, 8));
    expect_error([&] { other_batch.restore(nlohmann::ordered_json::parse(saved)); },
                 "global_batch is 12 in the saved state but 8");
  }
  const LoaderPosition p{2, 5, 30};
  EXPECT_EQ(LoaderPosition::from_json(p.to_json()), p);
  expect_error([] { LoaderPosition::from_json({{"epoch", 0}, {"step", 1}}); }, "\"index\" must be an integer >= 0");
  Loader seq(config(LoaderMode::Sequential, 3));
  expect_error([&] { seq.set_position({0, 205, 0}); }, "index 205 outside the 205 windows");
}

TEST(Loader, RejectsImpossibleConfigurations) {
  LoaderConfig c = config(LoaderMode::Random, 2);
  c.window = 5000;
  expect_error([&] { Loader l(c); }, "no shard holds a window of 5000 tokens (shard sizes: 1000, 10, 2503)");
  c = config(LoaderMode::Random, 2, 1, 3, 3);
  expect_error([&] { Loader l(c); }, "rank 3 of world_size 3");
  c = config(LoaderMode::Random, 2);
  c.vocab_size = 1000;
  expect_error([&] { Loader l(c); }, "shard_1.bin: token 100000 at index 0 >= vocab_size 1000");
  Loader l(config(LoaderMode::Random, 2));
  expect_error([&] { l.next(Tensor::empty(Shape{3, kW}, DType::I32)); }, "loader");
  expect_error([] { parse_loader_mode("shuffled"); }, "loader mode 'shuffled': expected random or sequential");
}

}  // namespace
}  // namespace moelab
