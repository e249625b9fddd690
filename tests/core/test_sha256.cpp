// SHA-256 against the FIPS 180-4 / NIST example vectors (empty, one block, two blocks, a million
// 'a' fed in uneven pieces), and a file's digest against its bytes'.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/check.h"
#include "core/sha256.h"

namespace moelab {
namespace {

TEST(Sha256, NistVectors) {
  EXPECT_EQ(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";  // 448 bits: padding spills
  EXPECT_EQ(sha256_hex(two.data(), two.size()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  Sha256 s;
  const std::string a(1024, 'a');  // every piece below is shorter
  size_t fed = 0;
  for (size_t piece = 1; fed < 1000000; piece = piece % 997 + 7) {  // pieces that straddle the 64-byte blocks
    const size_t n = std::min(piece, 1000000 - fed);
    s.update(a.data(), n);
    fed += n;
  }
  EXPECT_EQ(s.hex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, FileDigestIsItsBytesDigest) {
  const std::string path = (std::filesystem::path(::testing::TempDir()) / "moelab_sha256_test.bin").string();
  std::string bytes;
  for (int i = 0; i < 3 * (1 << 20) + 17; ++i) bytes += static_cast<char>(i * 7 + i / 251);  // > one read chunk
  std::ofstream(path, std::ios::binary) << bytes;
  EXPECT_EQ(sha256_file(path), sha256_hex(bytes.data(), bytes.size()));
  std::remove(path.c_str());
  EXPECT_THROW(sha256_file(path), Error);
}

}  // namespace
}  // namespace moelab
