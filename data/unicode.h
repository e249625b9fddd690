// The little Unicode that byte-level tokenizers need:
// - decoding one UTF-8 character at a time, leniently: a byte that does not start a valid UTF-8
//   sequence (stray continuation byte, overlong form, surrogate, > U+10FFFF, cut-off sequence) is
//   returned as a one-byte "invalid" character, so that any byte string can be split and nothing
//   is ever dropped or replaced;
// - the character classes of the GPT-2 pre-tokenizer regex: \p{L} letters, \p{N} numbers, \s white
//   space, and everything else (invalid bytes are "other");
// - GPT-2's byte <-> unicode table (bytes_to_unicode in openai/gpt-2 encoder.py), which names each of
//   the 256 bytes by a printable character so that vocabularies can be stored as JSON strings:
//   the 188 printable bytes ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves and the other 68
//   (controls, space, 0x7F..0xA0, 0xAD) become U+0100.. in byte order, e.g. ' ' -> 'Ġ' (U+0120),
//   '\n' -> 'Ċ' (U+010A).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace moelab::unicode {

struct CodepointRange {
  uint32_t first, last;  // inclusive
};
// Generated tables (unicode_tables.cpp), sorted and disjoint.
extern const CodepointRange kLetterRanges[];
extern const size_t kNumLetterRanges;
extern const CodepointRange kNumberRanges[];
extern const size_t kNumNumberRanges;

constexpr uint32_t kInvalid = 0xFFFFFFFFu;  // the code point of an invalid byte

struct Utf8Char {
  uint32_t cp;  // the code point, or kInvalid
  int len;      // bytes consumed: 1..4 (1 for an invalid byte)
};
// The character starting at byte i of s (i < s.size()).
Utf8Char next_utf8(std::string_view s, size_t i);

// Appends the UTF-8 encoding of cp (<= U+10FFFF, not a surrogate).
void append_utf8(std::string& out, uint32_t cp);

enum class CharClass : uint8_t { Letter, Number, Space, Other };
// Space is the Unicode White_Space property (what Oniguruma's \s matches): \t \n \v \f \r, ' ',
// U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
CharClass classify(uint32_t cp);

// GPT-2's table: the code point that stands for byte b, and back (-1 for a code point that stands
// for no byte).
uint32_t byte_to_codepoint(uint8_t b);
int codepoint_to_byte(uint32_t cp);
// Every byte of `bytes` replaced by the UTF-8 of its stand-in character ("a b" -> "aĠb").
std::string bytes_to_visible(std::string_view bytes);
// The inverse; false when `visible` is not valid UTF-8 or holds a character that stands for no byte.
bool visible_to_bytes(std::string_view visible, std::string* bytes);

}  // namespace moelab::unicode
