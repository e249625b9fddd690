// train/config_file + run_config: a TOML run config, then `--set` overrides, then validate(); and
// the same text as a hardware file of `moelab plan`. The input is the TOML text, then (after a NUL
// byte, when there is one) the overrides, one per line.
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "tests/fuzz/common.h"
#include "train/config_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  const std::string toml = input.substr(0, nul);
  std::vector<std::string> overrides;
  if (nul != std::string::npos) {
    size_t begin = nul + 1;
    while (begin <= input.size()) {
      const size_t end = std::min(input.find('\n', begin), input.size());
      overrides.push_back(input.substr(begin, end - begin));
      begin = end + 1;
    }
  }
  moelab::fuzz::expect_clean([&] {
    moelab::RunConfig cfg = moelab::parse_config_toml(toml, "fuzz.toml");
    for (const std::string& o : overrides) moelab::apply_override(cfg, o);
    cfg.validate();
    // A valid config reads back unchanged from what a checkpoint stores and from the TOML that
    // `moelab info --config` writes.
    if (moelab::run_config_from_json(moelab::to_json(cfg)) != cfg ||
        moelab::parse_config_toml(moelab::to_toml(cfg), "written back") != cfg) {
      std::fprintf(stderr, "fuzz: the config does not read back as it was:\n%s\n", moelab::to_toml(cfg).c_str());
      std::abort();
    }
  });
  moelab::fuzz::expect_clean([&] { moelab::parse_hardware_toml(toml, "fuzz_hardware.toml"); });
  return 0;
}
