// data/shard: llm.c token shards (a 1 KiB header, then uint16 or uint32 tokens), memory-mapped.
#include "data/shard.h"
#include "tests/fuzz/common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = moelab::fuzz::write_input(data, size, "input.bin");
  moelab::fuzz::expect_clean([&] { moelab::read_shard_info(path); });
  for (int64_t vocab : {int64_t{0}, int64_t{65}, int64_t{50257}})
    moelab::fuzz::expect_clean([&] {
      const moelab::Shard shard = moelab::Shard::open(path, vocab);
      std::vector<int32_t> all = shard.tokens();
      if (shard.size() >= 2) {
        int32_t two[2];
        shard.copy_to(shard.size() - 2, 2, two);
      }
      moelab::read_shard(path, vocab);
    });
  return 0;
}
