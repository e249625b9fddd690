// data/tokenizer: tokenizer.json (moelab's own, or a Hugging Face byte-level BPE), then encoding
// and decoding with what was loaded.
#include "data/tokenizer.h"
#include "tests/fuzz/common.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = moelab::fuzz::write_input(data, size, "tokenizer.json");
  moelab::fuzz::expect_clean([&] {
    const moelab::Tokenizer tok = moelab::Tokenizer::load(path);
    const std::string text = "First Citizen:\nBefore we proceed any further, hear me speak.<|endoftext|> \xc3\xa9t\xc3\xa9 42!";
    moelab::fuzz::expect_clean([&] { tok.decode(tok.encode(text)); });
    moelab::fuzz::expect_clean([&] { tok.decode(tok.encode_with_special(text)); });
    std::vector<int32_t> ids;
    for (int32_t id = 0; id < tok.vocab_size() && id < 4096; ++id) ids.push_back(id);
    tok.decode(ids);
    tok.to_json().dump();
  });
  return 0;
}
