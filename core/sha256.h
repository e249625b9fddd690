// SHA-256 (FIPS 180-4), for the checksums a checkpoint records at save and verifies at load
// (train/checkpoint.h): a file overwritten with other bytes of the same size is caught, not loaded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moelab {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t bytes);
  std::string hex();  // the digest as 64 lowercase hex digits; ends the hash

 private:
  void block(const uint8_t* p);  // one 64-byte block
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buffered_ = 0;
  uint64_t total_ = 0;  // bytes hashed
};

std::string sha256_hex(const void* data, size_t bytes);
// The SHA-256 of a file's contents, read in chunks (throws naming the file when it cannot be read).
std::string sha256_file(const std::string& path);

}  // namespace moelab
