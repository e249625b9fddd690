// core/safetensors: the reader of checkpoints, golden files and Hugging Face weights.
#include "core/safetensors.h"
#include "tests/fuzz/common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = moelab::fuzz::write_input(data, size, "input.safetensors");
  moelab::fuzz::expect_clean([&] {
    const moelab::Safetensors st = moelab::read_safetensors(path);
    unsigned sum = 0;  // touch every byte read, so that ASan sees any read out of bounds
    for (const auto& [name, t] : st.tensors)
      for (size_t i = 0; i < t.nbytes(); ++i) sum += static_cast<const unsigned char*>(t.raw())[i];
    if (!st.tensors.empty()) st.at(st.tensors.front().first);
    (void)sum;
  });
  return 0;
}
