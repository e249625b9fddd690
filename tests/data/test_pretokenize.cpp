// UTF-8 decoding, the GPT-2 byte <-> unicode table and the hand-written GPT-2 regex split, against
// hand-worked cases (the Python check tests/data/check_hf_tokenizer.py compares the whole pipeline
// with Hugging Face `tokenizers` on real text).
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "data/pretokenize.h"
#include "data/unicode.h"
#include "tests/data/data_test_util.h"

namespace moelab {
namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  for (std::string_view p : gpt2_split(s)) out.emplace_back(p);
  return out;
}

using V = std::vector<std::string>;

TEST(Unicode, DecodesValidUtf8AndFlagsEveryInvalidByte) {
  const auto cp = [](const std::string& s) { return unicode::next_utf8(s, 0); };
  EXPECT_EQ(cp("A").cp, 0x41u);
  EXPECT_EQ(cp("\xC3\xA9").cp, 0xE9u);  // é
  EXPECT_EQ(cp("\xC3\xA9").len, 2);
  EXPECT_EQ(cp("\xE6\x97\xA5").cp, 0x65E5u);  // 日
  EXPECT_EQ(cp("\xF0\x9F\x98\x80").cp, 0x1F600u);  // 😀
  EXPECT_EQ(cp("\xF0\x9F\x98\x80").len, 4);
  // Invalid: stray continuation, overlong '/', surrogate U+D800, > U+10FFFF, cut-off sequence, 0xFF.
  for (const std::string bad : {"\x80", "\xC0\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80", "\xE6\x97", "\xFF"}) {
    EXPECT_EQ(cp(bad).cp, unicode::kInvalid) << bad;
    EXPECT_EQ(cp(bad).len, 1) << bad;
  }
}

TEST(Unicode, ClassifiesLettersNumbersAndWhiteSpace) {
  using unicode::CharClass;
  EXPECT_EQ(unicode::classify('a'), CharClass::Letter);
  EXPECT_EQ(unicode::classify(0xE9), CharClass::Letter);    // é
  EXPECT_EQ(unicode::classify(0x65E5), CharClass::Letter);  // 日 (Lo)
  EXPECT_EQ(unicode::classify('7'), CharClass::Number);
  EXPECT_EQ(unicode::classify(0x663), CharClass::Number);  // Arabic-Indic digit three
  EXPECT_EQ(unicode::classify(0xBD), CharClass::Number);   // ½ (No)
  EXPECT_EQ(unicode::classify(' '), CharClass::Space);
  EXPECT_EQ(unicode::classify('\n'), CharClass::Space);
  EXPECT_EQ(unicode::classify(0xA0), CharClass::Space);    // no-break space
  EXPECT_EQ(unicode::classify(0x3000), CharClass::Space);  // ideographic space
  EXPECT_EQ(unicode::classify(0x1C), CharClass::Other);    // not White_Space (Python's isspace says yes)
  EXPECT_EQ(unicode::classify('\''), CharClass::Other);
  EXPECT_EQ(unicode::classify(0x1F600), CharClass::Other);  // emoji
  EXPECT_EQ(unicode::classify(unicode::kInvalid), CharClass::Other);
}

TEST(Unicode, Gpt2ByteTableMatchesTheReference) {
  // openai/gpt-2 encoder.py: printable bytes map to themselves, the rest to 256, 257, ... in order.
  EXPECT_EQ(unicode::byte_to_codepoint('!'), 0x21u);
  EXPECT_EQ(unicode::byte_to_codepoint(0), 0x100u);
  EXPECT_EQ(unicode::byte_to_codepoint('\n'), 0x10Au);
  EXPECT_EQ(unicode::byte_to_codepoint(' '), 0x120u);  // 'Ġ'
  EXPECT_EQ(unicode::byte_to_codepoint(0x7F), 0x121u);
  EXPECT_EQ(unicode::byte_to_codepoint(0xAD), 0x143u);  // the last of the 68 remapped bytes
  EXPECT_EQ(unicode::byte_to_codepoint(0xFF), 0xFFu);
  std::set<uint32_t> seen;
  for (int b = 0; b < 256; ++b) {
    const uint32_t c = unicode::byte_to_codepoint(static_cast<uint8_t>(b));
    EXPECT_TRUE(seen.insert(c).second) << "byte " << b << " shares code point " << c;
    EXPECT_EQ(unicode::codepoint_to_byte(c), b);
  }
  EXPECT_EQ(unicode::codepoint_to_byte(0x20), -1);  // ' ' stands for no byte (Ġ does)
  EXPECT_EQ(unicode::bytes_to_visible("a b\n"), "a\xC4\xA0" "b\xC4\x8A");  // "aĠbĊ"
  const std::string all = testing::random_bytes(4096, 7);
  std::string back;
  ASSERT_TRUE(unicode::visible_to_bytes(unicode::bytes_to_visible(all), &back));
  EXPECT_EQ(back, all);
  EXPECT_FALSE(unicode::visible_to_bytes("a b", &back));  // a raw space is not in the alphabet
}

TEST(Pretokenize, SplitsLikeTheGpt2Regex) {
  EXPECT_EQ(split("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(split("Hello, world!"), (V{"Hello", ",", " world", "!"}));
  // Contractions are lowercase only; "'" elsewhere joins a punctuation run.
  EXPECT_EQ(split("he's I'll we've they'd"), (V{"he", "'s", " I", "'ll", " we", "'ve", " they", "'d"}));
  EXPECT_EQ(split("HE'S"), (V{"HE", "'", "S"}));
  EXPECT_EQ(split("!'s"), (V{"!'", "s"}));
  // Letters, numbers and the rest are separate runs, each taking one space in front.
  EXPECT_EQ(split("abc123 456def ..."), (V{"abc", "123", " 456", "def", " ..."}));
  // White space: a run before a word gives its last space to the word; "\n\n" before a word splits.
  EXPECT_EQ(split("a  b"), (V{"a", " ", " b"}));
  EXPECT_EQ(split("a\n\nb"), (V{"a", "\n", "\n", "b"}));
  EXPECT_EQ(split("a \n b"), (V{"a", " \n", " b"}));
  EXPECT_EQ(split("a\tb"), (V{"a", "\t", "b"}));
  EXPECT_EQ(split("end   "), (V{"end", "   "}));
  EXPECT_EQ(split(" "), (V{" "}));
  // Unicode: letters are letters in any script; NBSP is white space but not the optional ' '.
  EXPECT_EQ(split("\xC3\xBC" "ber alles"), (V{"\xC3\xBC" "ber", " alles"}));
  EXPECT_EQ(split("a\xC2\xA0" "b"), (V{"a", "\xC2\xA0", "b"}));
  // Invalid bytes are "other" characters: they run together like punctuation.
  EXPECT_EQ(split("x\xFF\xFE y"), (V{"x", "\xFF\xFE", " y"}));
  EXPECT_EQ(split(std::string("a\0b", 3)), (V{"a", std::string(1, '\0'), "b"}));
}

TEST(Pretokenize, PiecesConcatenateBackToAnyInput) {
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const std::string text = testing::random_bytes(5000, seed);
    std::string joined;
    for (std::string_view p : gpt2_split(text)) {
      ASSERT_FALSE(p.empty());
      joined += p;
    }
    EXPECT_EQ(joined, text) << "seed " << seed;
  }
}

}  // namespace
}  // namespace moelab
