// Token shards in llm.c's layout (dev/data/data_common.py in karpathy/llm.c), so that shards made
// by llm.c's scripts load as they are and moelab's shards load in llm.c:
//   a header of 256 little-endian int32:
//     [0] magic   20240520 (tokens are uint16, "gpt-2")  or 20240801 (tokens are uint32, "llama-3")
//     [1] version 1                                      or 7
//     [2] the number of tokens N (so N < 2^31)
//     [3..255] zero
//   then the N tokens, little-endian.
// The writer picks uint16 when every id fits (vocab_size <= 65536), else uint32. The reader checks
// everything before trusting it: a short file, a bad magic, a version that does not go with the
// magic, a file size that disagrees with N (truncated or trailing bytes) and any token id >=
// vocab_size are errors that name the file, the value found and the value expected.
// Reading memory-maps the file, so a shard of hundreds of millions of tokens costs no copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace moelab {

constexpr int32_t kShardMagicU16 = 20240520;
constexpr int32_t kShardVersionU16 = 1;
constexpr int32_t kShardMagicU32 = 20240801;
constexpr int32_t kShardVersionU32 = 7;
constexpr size_t kShardHeaderInts = 256;
constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);

struct ShardInfo {
  int32_t magic = 0, version = 0;
  int token_bytes = 0;     // 2 or 4
  int64_t num_tokens = 0;  // header[2]
};

// 2 when every id of a vocab_size vocabulary fits in uint16, else 4.
int shard_token_bytes(int64_t vocab_size);

// Writes tokens (each in [0, vocab_size)) to path (via path.tmp, renamed into place).
void write_shard(const std::string& path, const int32_t* tokens, size_t n, int64_t vocab_size);
inline void write_shard(const std::string& path, const std::vector<int32_t>& tokens, int64_t vocab_size) {
  write_shard(path, tokens.data(), tokens.size(), vocab_size);
}
// The same with the token width chosen by the caller (2: magic 20240520, 4: magic 20240801).
void write_shard_with_width(const std::string& path, const int32_t* tokens, size_t n, int token_bytes);

// Reads and validates the header and the file size (not the tokens).
ShardInfo read_shard_info(const std::string& path);

// A validated, memory-mapped shard. Move-only.
class Shard {
 public:
  // vocab_size > 0: every token is checked to be below it (one pass over the file); <= 0: only
  // that uint32 tokens fit in int32.
  static Shard open(const std::string& path, int64_t vocab_size);
  Shard() = default;
  Shard(Shard&& other) noexcept;
  Shard& operator=(Shard&& other) noexcept;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard();

  const std::string& path() const { return path_; }
  const ShardInfo& info() const { return info_; }
  int64_t size() const { return info_.num_tokens; }
  int32_t at(int64_t i) const;  // unchecked index
  // out[0, count) <- tokens [begin, begin + count) as int32 (range checked).
  void copy_to(int64_t begin, int64_t count, int32_t* out) const;
  std::vector<int32_t> tokens() const;  // all of them

 private:
  void release();
  std::string path_;
  ShardInfo info_;
  void* map_ = nullptr;  // the whole file
  size_t map_bytes_ = 0;
  const unsigned char* data_ = nullptr;  // the first token
};

// All tokens of a shard, validated against vocab_size (see Shard::open).
std::vector<int32_t> read_shard(const std::string& path, int64_t vocab_size);

}  // namespace moelab
