// The GPT-2 pre-tokenizer: splits text into the pieces that GPT-2's regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// finds, written by hand (no regex library). BPE merges never cross a piece boundary, so a word
// and the space before it ("Ġthe") become tokens, but "the." never does.
// The pieces are the same as Hugging Face `tokenizers`' ByteLevel pre-tokenizer with use_regex
// (the character classes come from it, see unicode_tables.cpp). Any byte string can be split:
// a byte that is not valid UTF-8 is a one-byte character of class "other" (neither letter,
// number nor space), and the pieces concatenate back to the input exactly.
#pragma once

#include <cstddef>
#include <string_view>
#include <vector>

namespace moelab {

// Length in bytes of the piece that starts at byte `begin` of text (begin < text.size()).
size_t gpt2_piece_length(std::string_view text, size_t begin);

// Calls fn(std::string_view piece) for every piece of text, in order.
template <typename Fn>
void for_each_gpt2_piece(std::string_view text, Fn&& fn) {
  for (size_t i = 0; i < text.size();) {
    const size_t n = gpt2_piece_length(text, i);
    fn(text.substr(i, n));
    i += n;
  }
}

// All pieces (views into text).
std::vector<std::string_view> gpt2_split(std::string_view text);

}  // namespace moelab
