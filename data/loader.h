// The data loader: batches of token windows from one or more shards (shard.h).
//
// A window is W consecutive tokens of one shard (W = T + 1 + D_mtp: T inputs, and the targets of
// the main head and of D_mtp multi-token-prediction depths are the same tokens shifted by 1..D+1);
// a window never crosses from one shard into the next. A batch is an int32 [B, W] CPU tensor.
//
// Two modes:
//   random      every row starts at a uniformly random position among all windows of all shards
//               (overlapping windows allowed). Row g of the global batch of step s draws from the
//               Philox stream (seed, counter = s * B_global + g), so a batch depends only on the seed
//               and the step: not on the thread count, the rank count or what came before.
//   sequential  the shards are cut into non-overlapping windows (starts 0, W, 2W, ...; a shard's
//               last < W tokens are unused); each epoch visits every window exactly once, in an
//               order shuffled from (seed, epoch) (or in file order with shuffle = false, e.g. for
//               validation). Batches run on across epoch ends, so every batch is full.
// Data parallel: with R ranks each of B rows, the global batch has B_global = R * B rows and rank r
// takes rows [r * B, (r + 1) * B): R ranks see together exactly what one rank with B_global sees.
//
// The position (epoch, index, step) says where the next batch starts; saved to JSON with the
// checkpoint and restored, the run continues with exactly the batches it would have seen.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "data/shard.h"

namespace moelab {

enum class LoaderMode { Random, Sequential };
const char* loader_mode_name(LoaderMode mode);        // "random", "sequential"
LoaderMode parse_loader_mode(const std::string& name);  // throws naming the bad name

struct LoaderConfig {
  std::vector<std::string> shards;  // files in llm.c's layout
  int64_t vocab_size = 0;           // every token is checked to be below it (> 0 required)
  int64_t batch_size = 1;           // B: rows per rank
  int64_t window = 2;               // W = T + 1 + D_mtp tokens per row
  LoaderMode mode = LoaderMode::Random;
  bool shuffle = true;              // sequential mode: shuffle each epoch (false: file order)
  uint64_t seed = 0;
  int rank = 0, world_size = 1;     // this process's slice of the global batch
};

// Random mode moves only `step` (epoch and index stay 0).
struct LoaderPosition {
  int64_t epoch = 0;  // sequential: epochs completed
  int64_t index = 0;  // sequential: windows of the current epoch already served (all ranks together)
  int64_t step = 0;   // batches served
  nlohmann::ordered_json to_json() const;
  static LoaderPosition from_json(const nlohmann::ordered_json& j);  // throws naming a missing field
  bool operator==(const LoaderPosition& o) const { return epoch == o.epoch && index == o.index && step == o.step; }
};

class Loader {
 public:
  explicit Loader(const LoaderConfig& config);

  // The next batch: i32 [B, W] on the CPU. The second form fills a caller's i32 [B, W] CPU tensor.
  Tensor next();
  void next(const Tensor& out);

  const LoaderConfig& config() const { return config_; }
  int64_t global_batch() const { return config_.batch_size * config_.world_size; }
  int64_t num_tokens() const { return total_tokens_; }     // in all shards
  int64_t num_windows() const { return total_windows_; }  // random: valid starts; sequential: windows per epoch

  const LoaderPosition& position() const { return pos_; }
  void set_position(const LoaderPosition& pos);  // checked: index within an epoch
  // The position plus the configuration it is only meaningful with (mode, seed, sizes);
  // restore() checks that configuration against this loader's, naming the first difference.
  nlohmann::ordered_json state_json() const;
  void restore(const nlohmann::ordered_json& state);

 private:
  // The shard and first token of window w (random: w = a start among all valid starts;
  // sequential: w = a window number).
  void locate(int64_t w, int64_t* shard, int64_t* begin) const;
  const std::vector<int64_t>& permutation(int64_t epoch);  // sequential: window order of an epoch

  LoaderConfig config_;
  std::vector<Shard> shards_;
  std::vector<int64_t> first_window_;  // prefix sums of each shard's windows (size = shards + 1)
  int64_t total_tokens_ = 0, total_windows_ = 0;
  LoaderPosition pos_;
  int64_t perm_epoch_ = -1;
  std::vector<int64_t> perm_;
};

}  // namespace moelab
