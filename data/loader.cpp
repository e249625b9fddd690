// The data loader (loader.h): window placement, the two sampling modes and the saved position.
#include "data/loader.h"

#include <algorithm>

#include "core/check.h"
#include "core/rng.h"

namespace moelab {

namespace {

// Philox streams of the loader (core/rng.h: words 2 = 0 and 1 are the parameter fills'): word 2 = 2
// for random window starts, 3 for the sequential shuffles.
constexpr uint32_t kStreamRandomStart = 2;
constexpr uint32_t kStreamShuffle = 3;

// 64 random bits from (seed, counter, stream, extra).
uint64_t draw64(uint64_t seed, uint64_t counter, uint32_t stream, uint32_t extra) {
  const std::array<uint32_t, 4> r = philox_block(seed, counter, stream, extra);
  return (static_cast<uint64_t>(r[0]) << 32) | r[1];
}

// A draw in [0, n) by multiply-shift: floor(x * n / 2^64). Its bias is below n / 2^64, nothing next
// to the window counts of any corpus.
int64_t below(uint64_t x, int64_t n) {
  return static_cast<int64_t>((static_cast<unsigned __int128>(x) * static_cast<uint64_t>(n)) >> 64);
}

}  // namespace

const char* loader_mode_name(LoaderMode mode) { return mode == LoaderMode::Random ? "random" : "sequential"; }

LoaderMode parse_loader_mode(const std::string& name) {
  if (name == "random") return LoaderMode::Random;
  if (name == "sequential") return LoaderMode::Sequential;
  MOELAB_FAIL("loader mode '", name, "': expected random or sequential");
}

nlohmann::ordered_json LoaderPosition::to_json() const {
  return {{"epoch", epoch}, {"index", index}, {"step", step}};
}

LoaderPosition LoaderPosition::from_json(const nlohmann::ordered_json& j) {
  LoaderPosition p;
  for (const char* key : {"epoch", "index", "step"})
    MOELAB_CHECK(j.is_object() && j.contains(key) && j[key].is_number_integer() && j[key].get<int64_t>() >= 0,
                 "loader position ", j.dump(), ": \"", key, "\" must be an integer >= 0");
  p.epoch = j["epoch"].get<int64_t>();
  p.index = j["index"].get<int64_t>();
  p.step = j["step"].get<int64_t>();
  return p;
}

Loader::Loader(const LoaderConfig& config) : config_(config) {
  const LoaderConfig& c = config_;
  MOELAB_CHECK(!c.shards.empty(), "loader: no shard files given");
  MOELAB_CHECK(c.vocab_size > 0, "loader: vocab_size ", c.vocab_size, ", expected > 0 (tokens are checked against it)");
  MOELAB_CHECK(c.batch_size >= 1, "loader: batch_size ", c.batch_size, ", expected >= 1");
  MOELAB_CHECK(c.window >= 2, "loader: window ", c.window, ", expected >= 2 (T + 1 + D_mtp tokens)");
  MOELAB_CHECK(c.world_size >= 1 && c.rank >= 0 && c.rank < c.world_size, "loader: rank ", c.rank, " of world_size ",
               c.world_size, ", expected 0 <= rank < world_size");

  // Windows per shard: sequential cuts non-overlapping windows, random may start anywhere.
  const bool seq = c.mode == LoaderMode::Sequential;
  first_window_.push_back(0);
  std::string sizes;
  for (const std::string& path : c.shards) {
    shards_.push_back(Shard::open(path, c.vocab_size));
    const int64_t n = shards_.back().size();
    total_tokens_ += n;
    const int64_t windows = seq ? n / c.window : std::max<int64_t>(0, n - c.window + 1);
    first_window_.push_back(first_window_.back() + windows);
    sizes += (sizes.empty() ? "" : ", ") + std::to_string(n);
  }
  total_windows_ = first_window_.back();
  MOELAB_CHECK(total_windows_ > 0, "loader: no shard holds a window of ", c.window, " tokens (shard sizes: ", sizes,
               ")");
}

void Loader::locate(int64_t w, int64_t* shard, int64_t* begin) const {
  // The last shard whose first window is <= w (shards without windows are skipped over).
  const auto it = std::upper_bound(first_window_.begin(), first_window_.end(), w) - 1;
  *shard = it - first_window_.begin();
  const int64_t k = w - *it;
  *begin = config_.mode == LoaderMode::Sequential ? k * config_.window : k;
}

const std::vector<int64_t>& Loader::permutation(int64_t epoch) {
  if (epoch == perm_epoch_) return perm_;
  perm_.resize(static_cast<size_t>(total_windows_));
  for (int64_t i = 0; i < total_windows_; ++i) perm_[i] = i;
  if (config_.shuffle) {
    // Fisher-Yates; step i swaps in a draw from [0, i] taken from (seed, i, epoch).
    for (int64_t i = total_windows_ - 1; i > 0; --i) {
      const int64_t j = below(draw64(config_.seed, static_cast<uint64_t>(i), kStreamShuffle,
                                     static_cast<uint32_t>(epoch)), i + 1);
      std::swap(perm_[i], perm_[j]);
    }
  }
  perm_epoch_ = epoch;
  return perm_;
}

Tensor Loader::next() {
  Tensor out = Tensor::empty(Shape{config_.batch_size, config_.window}, DType::I32);
  next(out);
  return out;
}

void Loader::next(const Tensor& out) {
  check_defined("loader", "out", out);
  check_dtype("loader", "out", out, DType::I32);
  check_shape("loader", "out", out, Shape{config_.batch_size, config_.window});
  MOELAB_CHECK(out.device() == Device::CPU, "loader: out is ", out.str(), ", expected a CPU tensor");
  int32_t* dst = out.data<int32_t>();
  const int64_t B = config_.batch_size, W = config_.window, Bg = global_batch();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t g = config_.rank * B + b;  // row in the global batch
    int64_t w;
    if (config_.mode == LoaderMode::Random) {
      w = below(draw64(config_.seed, static_cast<uint64_t>(pos_.step * Bg + g), kStreamRandomStart, 0), total_windows_);
    } else {
      const int64_t q = pos_.index + g;  // may run into the next epochs
      w = permutation(pos_.epoch + q / total_windows_)[q % total_windows_];
    }
    int64_t shard, begin;
    locate(w, &shard, &begin);
    shards_[shard].copy_to(begin, W, dst + b * W);
  }
  ++pos_.step;
  if (config_.mode == LoaderMode::Sequential) {
    pos_.index += Bg;
    pos_.epoch += pos_.index / total_windows_;
    pos_.index %= total_windows_;
  }
}

void Loader::set_position(const LoaderPosition& pos) {
  MOELAB_CHECK(pos.step >= 0 && pos.epoch >= 0 && pos.index >= 0, "loader: position (epoch ", pos.epoch, ", index ",
               pos.index, ", step ", pos.step, ") has a negative field");
  if (config_.mode == LoaderMode::Sequential)
    MOELAB_CHECK(pos.index < total_windows_, "loader: position index ", pos.index, " outside the ", total_windows_,
                 " windows of an epoch");
  else
    MOELAB_CHECK(pos.epoch == 0 && pos.index == 0, "loader: random mode keeps epoch and index 0, got epoch ",
                 pos.epoch, ", index ", pos.index, " (a sequential-mode position?)");
  pos_ = pos;
}

nlohmann::ordered_json Loader::state_json() const {
  return {{"mode", loader_mode_name(config_.mode)},
          {"seed", config_.seed},
          {"shuffle", config_.shuffle},
          {"window", config_.window},
          {"global_batch", global_batch()},
          {"num_windows", total_windows_},
          {"num_tokens", total_tokens_},
          {"position", pos_.to_json()}};
}

void Loader::restore(const nlohmann::ordered_json& state) {
  MOELAB_CHECK(state.is_object() && state.contains("position"), "loader state ", state.dump(),
               ": expected an object with a \"position\"");
  // The batches depend on these; a resumed run with another value would silently see other data.
  // The global batch counts, not how it is split over ranks: R ranks of B rows serve the same rows
  // as one rank of R * B.
  const nlohmann::ordered_json now = state_json();
  for (const char* key : {"mode", "seed", "shuffle", "window", "global_batch", "num_windows", "num_tokens"}) {
    if (std::string(key) == "shuffle" && config_.mode == LoaderMode::Random) continue;  // unused there
    MOELAB_CHECK(state.contains(key) && state[key] == now[key], "loader state: ", key, " is ",
                 state.contains(key) ? state[key].dump() : std::string("missing"), " in the saved state but ",
                 now[key].dump(), " in this loader");
  }
  set_position(LoaderPosition::from_json(state["position"]));
}

}  // namespace moelab
