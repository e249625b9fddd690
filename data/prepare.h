// `moelab prepare`: text files -> a tokenizer and token shards, ready for the loader.
//
// The inputs are read in the order given and joined (each file is a document). The split rule is
// positional so that train and val never overlap: the LAST val_fraction of the joined bytes is the
// validation text, the rest the training text (as nanoGPT's shakespeare preparation does); the
// split byte is written to meta.json. A file that straddles the split gives its head to train and
// its tail to val.
// The tokenizer is built from the training text only (bpe: trained on it; char: the alphabet of
// the whole text, train and val, because an alphabet is not a statistic worth hiding from the
// validation split and a val byte outside it would make the val split unencodable). When the
// tokenizer has "<|endoftext|>", each document's tokens are preceded by it (llm.c's convention),
// so the model sees where documents start.
// Output directory:
//   tokenizer.json                   Hugging Face format (tokenizer.h)
//   train_000.bin, train_001.bin ..  llm.c shards (shard.h) of at most shard_tokens tokens
//   val_000.bin ..                   (no val shard when val_fraction is 0)
//   meta.json                        the tokenizer kind and size, token counts, shards, sources
//                                    and the split rule
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"

namespace moelab {

struct PrepareOptions {
  std::vector<std::string> inputs;  // text files
  std::string out_dir;              // created if missing
  TokenizerKind kind = TokenizerKind::Bpe;
  int64_t vocab_size = 4096;        // bpe only: 256 bytes + merges + specials
  double val_fraction = 0.1;        // in [0, 1)
  int64_t shard_tokens = 100000000; // at most this many tokens per shard file (llm.c uses 1e8)
  // Special tokens; unset: the kind's default (bpe: <|endoftext|>; char, byte: none).
  std::optional<std::vector<std::string>> specials;
  bool verbose = false;             // progress lines on stdout
};

struct PrepareSummary {
  std::string out_dir, tokenizer_path, meta_path;
  TokenizerKind kind = TokenizerKind::Bpe;
  int64_t vocab_size = 0;           // of the tokenizer actually built
  int64_t total_bytes = 0, split_byte = 0;  // val = bytes [split_byte, total_bytes)
  int64_t train_tokens = 0, val_tokens = 0;
  std::vector<std::string> train_shards, val_shards;  // paths
  double tokenizer_seconds = 0, total_seconds = 0;
  std::vector<std::string> warnings;  // inputs that do not look like text (NUL bytes, not UTF-8)
};

PrepareSummary prepare(const PrepareOptions& options);

// Reads DIR/meta.json back (paths made absolute against dir), e.g. for the trainer to find the
// shards and the vocabulary size.
PrepareSummary read_prepared(const std::string& dir);

}  // namespace moelab
