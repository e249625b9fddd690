// train/checkpoint: trainer_state.json (step, seed, counters, the config, the tokenizer, the file
// list and checksums), then what a resume does with it: the data loader's saved position restored
// into a loader (sequential and random mode) and a batch drawn from there.
#include "data/loader.h"
#include "data/shard.h"
#include "tests/fuzz/common.h"
#include "train/checkpoint.h"

namespace {

moelab::Loader make_loader(moelab::LoaderMode mode) {
  static const std::string shard = [] {
    std::vector<int32_t> tokens(1000);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i * 7 % 65);
    const std::string path = moelab::fuzz::scratch_path("loader.bin");
    moelab::write_shard(path, tokens, 65);
    return path;
  }();
  moelab::LoaderConfig c;
  c.shards = {shard};
  c.vocab_size = 65;
  c.batch_size = 2;
  c.window = 9;
  c.mode = mode;
  return moelab::Loader(c);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  moelab::fuzz::expect_clean([&] {
    const moelab::StateFile s = moelab::parse_trainer_state(text, "trainer_state.json");
    if (s.state.loader.is_null()) return;
    for (moelab::LoaderMode mode : {moelab::LoaderMode::Sequential, moelab::LoaderMode::Random})
      moelab::fuzz::expect_clean([&] {
        moelab::Loader loader = make_loader(mode);
        loader.restore(s.state.loader);
        loader.next();
      });
  });
  return 0;
}
