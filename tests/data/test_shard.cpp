// llm.c token shards: round trips in both formats, a file built byte for byte the way llm.c's
// Python writer builds it (dev/data/data_common.py: write_datafile), and corrupt files that must
// give errors naming the problem.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "data/shard.h"
#include "tests/data/data_test_util.h"
#include "tests/harness.h"

namespace moelab {
namespace {

using testing::expect_error;

std::vector<int32_t> random_tokens(size_t n, int32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab));
  t.front() = vocab - 1;  // the largest id must survive the round trip too
  return t;
}

// llm.c's writer, transcribed:
//   header = np.zeros(256, dtype=np.int32); header[0] = magic; header[1] = version; header[2] = len(toks)
//   f.write(header.tobytes()); f.write(np.array(toks, dtype=uint16 or uint32).tobytes())
std::string llmc_bytes(const std::vector<int32_t>& toks, bool u32) {
  int32_t header[256] = {};
  header[0] = u32 ? 20240801 : 20240520;
  header[1] = u32 ? 7 : 1;
  header[2] = static_cast<int32_t>(toks.size());
  std::string s(reinterpret_cast<const char*>(header), sizeof(header));
  for (int32_t t : toks) {
    if (u32) {
      const uint32_t v = static_cast<uint32_t>(t);
      s.append(reinterpret_cast<const char*>(&v), 4);
    } else {
      const uint16_t v = static_cast<uint16_t>(t);
      s.append(reinterpret_cast<const char*>(&v), 2);
    }
  }
  return s;
}

TEST(Shard, RoundTripsUint16AndUint32) {
  const std::string dir = testing::scratch_dir("shard_roundtrip");
  for (const int64_t vocab : {int64_t{65}, int64_t{50257}, int64_t{65536}, int64_t{65537}, int64_t{128256}}) {
    SCOPED_TRACE(vocab);
    const std::vector<int32_t> toks = random_tokens(10007, static_cast<int32_t>(vocab), vocab);
    const std::string path = dir + "/s.bin";
    write_shard(path, toks, vocab);
    const ShardInfo info = read_shard_info(path);
    const bool u16 = vocab <= 65536;
    EXPECT_EQ(info.magic, u16 ? kShardMagicU16 : kShardMagicU32);
    EXPECT_EQ(info.version, u16 ? 1 : 7);
    EXPECT_EQ(info.token_bytes, u16 ? 2 : 4);
    EXPECT_EQ(info.num_tokens, 10007);
    EXPECT_EQ(read_shard(path, vocab), toks);
    // The bytes on disk are exactly what llm.c's writer produces.
    EXPECT_EQ(testing::read_bytes(path), llmc_bytes(toks, !u16));
  }
  write_shard(dir + "/empty.bin", std::vector<int32_t>{}, 100);
  EXPECT_EQ(read_shard(dir + "/empty.bin", 100).size(), 0u);
}

TEST(Shard, ReadsAFileWrittenTheLlmcWay) {
  const std::string dir = testing::scratch_dir("shard_llmc");
  // GPT-2 ids, including <|endoftext|> = 50256 and values above 32767 (sign bit of int16).
  const std::vector<int32_t> gpt2 = {50256, 15496, 11, 995, 0, 40000, 32768};
  testing::write_bytes(dir + "/gpt2.bin", llmc_bytes(gpt2, false));
  EXPECT_EQ(read_shard(dir + "/gpt2.bin", 50257), gpt2);
  // Llama 3 ids (uint32, magic 20240801 version 7).
  const std::vector<int32_t> llama3 = {128000, 9906, 1917, 128001, 70000};
  testing::write_bytes(dir + "/llama3.bin", llmc_bytes(llama3, true));
  const Shard s = Shard::open(dir + "/llama3.bin", 128256);
  EXPECT_EQ(s.info().token_bytes, 4);
  EXPECT_EQ(s.size(), 5);
  EXPECT_EQ(s.at(4), 70000);
  EXPECT_EQ(s.tokens(), llama3);
  expect_error([&] { s.copy_to(3, 3, nullptr); }, "tokens [3, 6) outside the shard's 5 tokens");
}

TEST(Shard, CorruptFilesGiveErrorsNamingTheProblem) {
  const std::string dir = testing::scratch_dir("shard_corrupt");
  const std::vector<int32_t> toks = {1, 2, 3, 70, 5};
  const std::string good = llmc_bytes(toks, false);
  const auto read_bad = [&](const std::string& name, const std::string& bytes, int64_t vocab = 100) {
    const std::string path = dir + "/" + name;
    testing::write_bytes(path, bytes);
    return [path, vocab] { Shard::open(path, vocab); };
  };
  expect_error(read_bad("short.bin", good.substr(0, 100)), "short.bin: file too short: 100 bytes, expected at least "
                                                           "the 1024-byte header");
  std::string magic = good;
  const int32_t bad_magic = 12345;
  std::memcpy(&magic[0], &bad_magic, 4);
  expect_error(read_bad("magic.bin", magic), "magic.bin: bad magic 12345, expected 20240520 (uint16 tokens) or 20240801");
  std::string version = good;
  const int32_t bad_version = 7;
  std::memcpy(&version[4], &bad_version, 4);
  expect_error(read_bad("version.bin", version), "version.bin: version 7 with magic 20240520, expected version 1");
  expect_error(read_bad("truncated.bin", good.substr(0, good.size() - 3)),
               "truncated.bin: truncated: the header says 5 tokens of 2 bytes, so 1034 bytes in all, but the file has "
               "1031");
  expect_error(read_bad("trailing.bin", good + "xy"), "trailing.bin: 2 bytes after the 5 tokens");
  std::string negative = good;
  const int32_t minus_one = -1;
  std::memcpy(&negative[8], &minus_one, 4);
  expect_error(read_bad("negative.bin", negative), "negative.bin: header says -1 tokens");
  expect_error(read_bad("vocab.bin", good, 50), "vocab.bin: token 70 at index 3 >= vocab_size 50");
  expect_error([&] { Shard::open(dir + "/missing.bin", 10); }, "missing.bin: cannot open the shard");
  // The writer refuses ids outside the vocabulary.
  expect_error([&] { write_shard(dir + "/w.bin", toks, 70); }, "token 70 at index 3 is outside the vocabulary [0, 70)");
  const int32_t big = 70000;
  expect_error([&] { write_shard_with_width(dir + "/w.bin", &big, 1, 2); }, "token 70000 at index 0 does not fit in uint16");
}

}  // namespace
}  // namespace moelab
