// llm.c token shards: writer, validating reader, memory map (shard.h).
#include "data/shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "core/check.h"

// The format is little-endian and tokens are copied with memcpy, so the host must be too.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shard.cpp assumes a little-endian host");

namespace moelab {

namespace {

// Checks the header and the file size against each other; `file_size` is the size on disk.
ShardInfo parse_header(const std::string& path, const int32_t* h, uint64_t file_size) {
  ShardInfo info;
  info.magic = h[0];
  info.version = h[1];
  if (h[0] == kShardMagicU16) {
    MOELAB_CHECK(h[1] == kShardVersionU16, path, ": version ", h[1], " with magic ", kShardMagicU16,
                 ", expected version ", kShardVersionU16, " (uint16 tokens)");
    info.token_bytes = 2;
  } else if (h[0] == kShardMagicU32) {
    MOELAB_CHECK(h[1] == kShardVersionU32, path, ": version ", h[1], " with magic ", kShardMagicU32,
                 ", expected version ", kShardVersionU32, " (uint32 tokens)");
    info.token_bytes = 4;
  } else {
    MOELAB_FAIL(path, ": bad magic ", h[0], ", expected ", kShardMagicU16, " (uint16 tokens) or ", kShardMagicU32,
                " (uint32 tokens): not an llm.c token shard");
  }
  MOELAB_CHECK(h[2] >= 0, path, ": header says ", h[2], " tokens, expected a count >= 0");
  info.num_tokens = h[2];
  const uint64_t expected = kShardHeaderBytes + static_cast<uint64_t>(info.num_tokens) * info.token_bytes;
  MOELAB_CHECK(file_size >= expected, path, ": truncated: the header says ", info.num_tokens, " tokens of ",
               info.token_bytes, " bytes, so ", expected, " bytes in all, but the file has ", file_size);
  MOELAB_CHECK(file_size == expected, path, ": ", file_size - expected, " bytes after the ", info.num_tokens,
               " tokens the header announces (file has ", file_size, " bytes, expected ", expected, ")");
  return info;
}

}  // namespace

int shard_token_bytes(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

void write_shard(const std::string& path, const int32_t* tokens, size_t n, int64_t vocab_size) {
  MOELAB_CHECK(vocab_size > 0 && vocab_size <= (int64_t{1} << 31), path, ": vocab_size ", vocab_size,
               ", expected 1..2^31");
  for (size_t i = 0; i < n; ++i)
    MOELAB_CHECK(tokens[i] >= 0 && tokens[i] < vocab_size, path, ": token ", tokens[i], " at index ", i,
                 " is outside the vocabulary [0, ", vocab_size, ")");
  write_shard_with_width(path, tokens, n, shard_token_bytes(vocab_size));
}

void write_shard_with_width(const std::string& path, const int32_t* tokens, size_t n, int token_bytes) {
  MOELAB_CHECK(token_bytes == 2 || token_bytes == 4, path, ": token width ", token_bytes, " bytes, expected 2 or 4");
  MOELAB_CHECK(n < (size_t{1} << 31), path, ": ", n, " tokens, but the header counts them in an int32 (< 2^31)");
  const int64_t limit = token_bytes == 2 ? 65536 : (int64_t{1} << 31);
  for (size_t i = 0; i < n; ++i)
    MOELAB_CHECK(tokens[i] >= 0 && tokens[i] < limit, path, ": token ", tokens[i], " at index ", i, " does not fit in ",
                 token_bytes == 2 ? "uint16" : "uint32 (as a non-negative int32)");
  int32_t header[kShardHeaderInts] = {};
  header[0] = token_bytes == 2 ? kShardMagicU16 : kShardMagicU32;
  header[1] = token_bytes == 2 ? kShardVersionU16 : kShardVersionU32;
  header[2] = static_cast<int32_t>(n);

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MOELAB_CHECK(out, tmp, ": cannot open for writing");
    out.write(reinterpret_cast<const char*>(header), sizeof(header));
    // Convert in chunks so that a large shard needs no second full-size buffer.
    constexpr size_t kChunk = 1 << 16;
    std::vector<unsigned char> buf(kChunk * token_bytes);
    for (size_t begin = 0; begin < n; begin += kChunk) {
      const size_t count = std::min(kChunk, n - begin);
      for (size_t i = 0; i < count; ++i) {
        if (token_bytes == 2) {
          const uint16_t v = static_cast<uint16_t>(tokens[begin + i]);
          std::memcpy(&buf[i * 2], &v, 2);
        } else {
          const uint32_t v = static_cast<uint32_t>(tokens[begin + i]);
          std::memcpy(&buf[i * 4], &v, 4);
        }
      }
      out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(count * token_bytes));
    }
    out.flush();
    MOELAB_CHECK(out, tmp, ": write failed (disk full?)");
  }
  MOELAB_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename ", tmp, " to ", path);
}

ShardInfo read_shard_info(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  MOELAB_CHECK(in, path, ": cannot open the shard for reading");
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  MOELAB_CHECK(file_size >= kShardHeaderBytes, path, ": file too short: ", file_size, " bytes, expected at least the ",
               kShardHeaderBytes, "-byte header");
  in.seekg(0);
  int32_t header[kShardHeaderInts];
  in.read(reinterpret_cast<char*>(header), sizeof(header));
  MOELAB_CHECK(in, path, ": read error in the header");
  return parse_header(path, header, file_size);
}

Shard Shard::open(const std::string& path, int64_t vocab_size) {
  Shard s;
  s.path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY);
  MOELAB_CHECK(fd >= 0, path, ": cannot open the shard for reading (", std::strerror(errno), ")");
  struct stat st {};
  const int stat_rc = ::fstat(fd, &st);
  const uint64_t file_size = stat_rc == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  if (stat_rc == 0 && file_size >= kShardHeaderBytes) {
    s.map_ = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (s.map_ == MAP_FAILED) s.map_ = nullptr;
    else s.map_bytes_ = file_size;
  }
  const int err = errno;
  ::close(fd);  // the mapping stays valid without the descriptor
  MOELAB_CHECK(stat_rc == 0, path, ": cannot stat the shard (", std::strerror(err), ")");
  MOELAB_CHECK(file_size >= kShardHeaderBytes, path, ": file too short: ", file_size, " bytes, expected at least the ",
               kShardHeaderBytes, "-byte header");
  MOELAB_CHECK(s.map_ != nullptr, path, ": cannot memory-map ", file_size, " bytes (", std::strerror(err), ")");

  int32_t header[kShardHeaderInts];
  std::memcpy(header, s.map_, sizeof(header));
  s.info_ = parse_header(path, header, file_size);
  s.data_ = static_cast<const unsigned char*>(s.map_) + kShardHeaderBytes;

  // One pass over the tokens: the largest id says whether the caller's vocabulary covers them.
  // (uint16 tokens need no pass when the vocabulary holds every uint16.)
  const int64_t limit = vocab_size > 0 ? vocab_size : (int64_t{1} << 31);
  if (s.info_.token_bytes == 4 || limit < 65536) {
    for (int64_t i = 0; i < s.size(); ++i) {
      int64_t v;
      if (s.info_.token_bytes == 2) {
        uint16_t x;
        std::memcpy(&x, s.data_ + 2 * i, 2);
        v = x;
      } else {
        uint32_t x;
        std::memcpy(&x, s.data_ + 4 * i, 4);
        v = x;
      }
      MOELAB_CHECK(v < limit, path, ": token ", v, " at index ", i,
                   vocab_size > 0 ? " >= vocab_size " : " does not fit in int32: >= ", limit,
                   vocab_size > 0 ? " (shard made with another tokenizer?)" : "");
    }
  }
  return s;
}

Shard::Shard(Shard&& o) noexcept { *this = std::move(o); }

Shard& Shard::operator=(Shard&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    info_ = o.info_;
    map_ = o.map_;
    map_bytes_ = o.map_bytes_;
    data_ = o.data_;
    o.map_ = nullptr;
    o.map_bytes_ = 0;
    o.data_ = nullptr;
    o.info_ = ShardInfo{};
  }
  return *this;
}

Shard::~Shard() { release(); }

void Shard::release() {
  if (map_) ::munmap(map_, map_bytes_);
  map_ = nullptr;
  map_bytes_ = 0;
  data_ = nullptr;
}

int32_t Shard::at(int64_t i) const {
  if (info_.token_bytes == 2) {
    uint16_t x;
    std::memcpy(&x, data_ + 2 * i, 2);
    return x;
  }
  uint32_t x;
  std::memcpy(&x, data_ + 4 * i, 4);
  return static_cast<int32_t>(x);
}

void Shard::copy_to(int64_t begin, int64_t count, int32_t* out) const {
  MOELAB_CHECK(begin >= 0 && count >= 0 && begin + count <= size(), path_, ": tokens [", begin, ", ", begin + count,
               ") outside the shard's ", size(), " tokens");
  for (int64_t i = 0; i < count; ++i) out[i] = at(begin + i);
}

std::vector<int32_t> Shard::tokens() const {
  std::vector<int32_t> out(static_cast<size_t>(size()));
  copy_to(0, size(), out.data());
  return out;
}

std::vector<int32_t> read_shard(const std::string& path, int64_t vocab_size) {
  return Shard::open(path, vocab_size).tokens();
}

}  // namespace moelab
