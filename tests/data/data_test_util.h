// Helpers shared by the data tests: the tinyshakespeare corpus, a private scratch directory per
// test process, raw file I/O and deterministic random bytes.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

namespace moelab::testing {

// The corpus for the data tests: $MOELAB_TINYSHAKESPEARE, else shared/data/tinyshakespeare.txt
// beside the repository. Empty when neither exists (the tests that need it then skip).
inline std::string tinyshakespeare_path() {
  if (const char* env = std::getenv("MOELAB_TINYSHAKESPEARE")) return env;
  const std::string p = std::string(MOELAB_SOURCE_DIR) + "/../shared/data/tinyshakespeare.txt";
  return std::filesystem::exists(p) ? p : std::string();
}

inline std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The whole corpus, read once per process.
inline const std::string& tinyshakespeare() {
  static const std::string text = [] {
    const std::string p = tinyshakespeare_path();
    return p.empty() ? std::string() : read_bytes(p);
  }();
  return text;
}

#define MOELAB_NEED_CORPUS()                                                                               \
  do {                                                                                                     \
    if (::moelab::testing::tinyshakespeare().empty())                                                      \
      GTEST_SKIP() << "tinyshakespeare.txt not found (set MOELAB_TINYSHAKESPEARE or place shared/ beside the repo)"; \
  } while (0)

// A fresh directory for this test (ctest runs tests as parallel processes: the pid keeps them apart).
inline std::string scratch_dir(const std::string& name) {
  const std::filesystem::path p =
      std::filesystem::path(::testing::TempDir()) / ("moelab_data_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p.string();
}

// n bytes, every value 0..255 equally likely (NULs and invalid UTF-8 included), from seed.
inline std::string random_bytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng() & 0xFF);
  return s;
}

}  // namespace moelab::testing
