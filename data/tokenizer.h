// Tokenizers: text bytes <-> token ids. Three kinds, one class, because all three are byte-level
// BPE vocabularies that differ only in their alphabet and merges:
//   char  the distinct bytes of the text, sorted (tinyshakespeare: 65 tokens); encoding a byte that
//         is not in the alphabet is an error naming the byte and its position (the alphabet is
//         built from the very text that is encoded, so that only happens on other text);
//   byte  all 256 bytes, id = byte value;
//   bpe   ids 0..255 are the bytes, then one id per learned merge (256, 257, ...), trained by moelab
//         (bpe.h) on GPT-2-style pre-tokenized text.
// Special tokens (e.g. "<|endoftext|>") take the ids after the base vocabulary, in the order given;
// vocab_size() counts them. Defaults: bpe has "<|endoftext|>", char and byte have none (so that
// the char vocabulary of tinyshakespeare is its 65 characters, as in nanoGPT).
//
// encode() treats its input as plain bytes, so a text that spells "<|endoftext|>" never produces
// the special id (like tiktoken's encode_ordinary); encode_with_special() replaces the spellings
// of special tokens by their ids first, as Hugging Face `tokenizers` does. Both accept any bytes
// (invalid UTF-8, NUL) and decode() gives the exact bytes back.
//
// Files: save() writes a Hugging Face tokenizer.json for every kind: model "BPE" (no merges for
// char and byte) whose vocabulary is written in GPT-2's byte-to-unicode alphabet, pre-tokenizer and
// decoder "ByteLevel" (add_prefix_space false), specials in added_tokens. The Python `tokenizers`
// package loads it (Tokenizer.from_file) and gives the same ids. load() reads these files back,
// and any byte-level BPE tokenizer.json of that shape (e.g. GPT-2's); the kind is inferred: merges
// -> bpe; the 256 bytes at ids 0..255 -> byte; otherwise char.
#pragma once

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "data/bpe.h"

namespace moelab {

enum class TokenizerKind { Char, Byte, Bpe };
const char* tokenizer_kind_name(TokenizerKind kind);       // "char", "byte", "bpe"
TokenizerKind parse_tokenizer_kind(const std::string& name);  // throws naming the bad name

constexpr const char* kEndOfText = "<|endoftext|>";

class Tokenizer {
 public:
  // The alphabet of `text` (every distinct byte), ids in byte order.
  static Tokenizer build_char(std::string_view text, const std::vector<std::string>& specials = {});
  static Tokenizer build_byte(const std::vector<std::string>& specials = {});
  // vocab_size counts the 256 bytes, the merges and the specials: 256 + merges + specials. The
  // result is smaller when the text runs out of pairs seen at least twice.
  // Several texts (documents): no pre-tokenized piece spans two of them.
  static Tokenizer train_bpe(const std::vector<std::string_view>& texts, int64_t vocab_size,
                             const std::vector<std::string>& specials = {kEndOfText}, BpeTrainStats* stats = nullptr);
  static Tokenizer train_bpe(std::string_view text, int64_t vocab_size,
                             const std::vector<std::string>& specials = {kEndOfText}, BpeTrainStats* stats = nullptr) {
    return train_bpe(std::vector<std::string_view>{text}, vocab_size, specials, stats);
  }
  // A bpe tokenizer from merges whose results are 256, 257, ... in order.
  static Tokenizer from_merges(const std::vector<BpeMerge>& merges, const std::vector<std::string>& specials = {});

  static Tokenizer load(const std::string& path);  // tokenizer.json
  // `where` names the source in error messages.
  static Tokenizer from_json(const nlohmann::ordered_json& j, const std::string& where);
  void save(const std::string& path) const;  // written to path.tmp, then renamed
  nlohmann::ordered_json to_json() const;

  TokenizerKind kind() const { return kind_; }
  int64_t vocab_size() const { return static_cast<int64_t>(tokens_.size()); }
  const std::string& token_bytes(int32_t id) const;  // the bytes of a token (a special's spelling)
  bool is_special(int32_t id) const;
  const std::vector<std::string>& special_tokens() const { return specials_; }
  int32_t special_id(std::string_view spelling) const;  // -1 when there is no such special token
  int32_t eot_id() const { return special_id(kEndOfText); }
  const std::vector<BpeMerge>& merges() const { return merges_; }

  std::vector<int32_t> encode(std::string_view bytes) const;
  std::vector<int32_t> encode_with_special(std::string_view text) const;
  std::string decode(const int32_t* ids, size_t n) const;  // throws on an id outside [0, vocab_size)
  std::string decode(const std::vector<int32_t>& ids) const { return decode(ids.data(), ids.size()); }

 private:
  void add_specials(const std::vector<std::string>& specials);
  void finish();  // builds the lookup tables from tokens_ and merges_
  // Appends the ids of bytes; offset: where bytes start in the caller's text (for error messages).
  void encode_ordinary(std::string_view bytes, size_t offset, std::vector<int32_t>& out) const;

  TokenizerKind kind_ = TokenizerKind::Byte;
  std::vector<std::string> tokens_;     // id -> bytes (specials: their spelling)
  std::vector<bool> special_;           // id -> is a special token
  std::vector<std::string> specials_;   // spellings, in id order (built by finish())
  std::vector<int32_t> special_ids_;    // their ids
  std::vector<BpeMerge> merges_;        // in rank order
  bool use_regex_ = true;               // split into GPT-2 pieces before merging (files may say no)
  bool ignore_merges_ = false;          // a piece that is a whole token maps to it directly (HF option)
  std::array<int32_t, 256> byte_id_{};  // the id of each one-byte token, -1 when absent
  std::unordered_map<std::string, int32_t> piece_id_;  // bytes -> id, only when ignore_merges_
  BpeMergeTable merge_table_;
};

}  // namespace moelab
