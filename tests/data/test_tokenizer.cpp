// Tokenizers: exact round trips of the three kinds on tinyshakespeare and on random bytes (NULs,
// invalid UTF-8), BPE training against a hand-worked example and a naive re-implementation, BPE
// training time on tinyshakespeare (printed), tokenizer.json save/load, special tokens and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "data/pretokenize.h"
#include "data/tokenizer.h"
#include "tests/data/data_test_util.h"
#include "tests/harness.h"

namespace moelab {
namespace {

using testing::expect_error;

// Text with every kind of character the split cares about, plus bytes that are not UTF-8.
std::string mixed_text(size_t pieces, uint64_t seed) {
  static const char* const kParts[] = {"the", " the", " King", "'s", "'ll", " ", "  ", "\n", "\n\n", "\t", "42",
                                       " 7", "!", "...", " \xC3\xA9t\xC3\xA9", "\xE6\x97\xA5\xE6\x9C\xAC",
                                       "\xF0\x9F\x98\x80", "\xC2\xA0", "\xFF", "\xC3", "\x80\x80",
                                       "<|endoftext|>", "<|endof"};
  std::string s;
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < pieces; ++i) {
    if (rng() % 10 == 0) s += std::string(1, static_cast<char>(rng() & 0xFF));  // any byte, NUL included
    else s += kParts[rng() % (sizeof(kParts) / sizeof(kParts[0]))];
  }
  return s;
}

// --- a naive BPE trainer, written independently of bpe.cpp: recount every pair each merge ---

struct NaiveBpe {
  std::vector<BpeMerge> merges;
  std::map<std::string, std::vector<int32_t>> words;  // final segmentation of each training piece
};

NaiveBpe naive_bpe(std::string_view text, int num_merges) {
  std::map<std::string, int64_t> counts;
  for (std::string_view p : gpt2_split(text)) ++counts[std::string(p)];
  NaiveBpe r;
  for (const auto& [w, c] : counts) {
    (void)c;
    for (unsigned char b : w) r.words[w].push_back(b);
  }
  for (int m = 0; m < num_merges; ++m) {
    std::map<std::pair<int32_t, int32_t>, int64_t> pairs;  // ordered: ties go to the smallest pair
    for (const auto& [w, s] : r.words)
      for (size_t i = 0; i + 1 < s.size(); ++i) pairs[{s[i], s[i + 1]}] += counts[w];
    std::pair<int32_t, int32_t> best{-1, -1};
    int64_t best_count = 0;
    for (const auto& [p, c] : pairs)
      if (c > best_count) best = p, best_count = c;
    if (best_count < 2) break;
    const int32_t id = 256 + m;
    r.merges.push_back({best.first, best.second, id});
    for (auto& [w, s] : r.words) {
      std::vector<int32_t> out;
      for (size_t i = 0; i < s.size(); ++i) {
        if (i + 1 < s.size() && s[i] == best.first && s[i + 1] == best.second) out.push_back(id), ++i;
        else out.push_back(s[i]);
      }
      s = out;
    }
  }
  return r;
}

void expect_same_merges(const std::vector<BpeMerge>& a, const std::vector<BpeMerge>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].left, b[i].left) << "merge " << i;
    ASSERT_EQ(a[i].right, b[i].right) << "merge " << i;
    ASSERT_EQ(a[i].result, b[i].result) << "merge " << i;
  }
}

// --- char and byte ---

TEST(CharTokenizer, TinyshakespeareHas65CharactersAndRoundTrips) {
  MOELAB_NEED_CORPUS();
  const std::string& text = testing::tinyshakespeare();
  const Tokenizer tok = Tokenizer::build_char(text);
  EXPECT_EQ(tok.kind(), TokenizerKind::Char);
  EXPECT_EQ(tok.vocab_size(), 65);  // nanoGPT's shakespeare_char
  EXPECT_EQ(tok.token_bytes(0), "\n");
  EXPECT_EQ(tok.token_bytes(1), " ");
  EXPECT_EQ(tok.token_bytes(64), "z");
  const std::vector<int32_t> ids = tok.encode(text);
  EXPECT_EQ(ids.size(), text.size());
  EXPECT_EQ(tok.decode(ids), text);
}

TEST(CharTokenizer, RoundTripsRandomBytesAndRejectsAnUnseenByte) {
  const std::string text = testing::random_bytes(20000, 1);
  const Tokenizer tok = Tokenizer::build_char(text);
  EXPECT_EQ(tok.decode(tok.encode(text)), text);
  const Tokenizer abc = Tokenizer::build_char("abcabc");
  EXPECT_EQ(abc.encode("cab"), (std::vector<int32_t>{2, 0, 1}));
  expect_error([&] { abc.encode("ab~c"); }, "byte 0x7e at position 2 is not in the vocabulary");
  expect_error([&] { Tokenizer::build_char(""); }, "the text is empty");
}

TEST(ByteTokenizer, IsTheIdentityOnAnyBytes) {
  const Tokenizer tok = Tokenizer::build_byte();
  EXPECT_EQ(tok.vocab_size(), 256);
  const std::string text = testing::random_bytes(10000, 2);
  const std::vector<int32_t> ids = tok.encode(text);
  ASSERT_EQ(ids.size(), text.size());
  for (size_t i = 0; i < text.size(); ++i) ASSERT_EQ(ids[i], static_cast<unsigned char>(text[i]));
  EXPECT_EQ(tok.decode(ids), text);
  expect_error([&] { tok.decode(std::vector<int32_t>{65, 256}); }, "id 256 at position 1 is outside the vocabulary");
}

// --- BPE ---

TEST(BpeTokenizer, LearnsTheTextbookExample) {
  // "aaabdaaabac" (Wikipedia's byte pair encoding example): aa occurs 4 times (with overlap) and
  // becomes Z = 256: "ZabdZabac". Then "Za" and "ab" both occur twice; the tie goes to the smaller
  // pair of ids, ('a' = 97, 'b' = 98) < (256, 97): Y = 257, "ZYdZYac". Then ZY -> X = 258: "XdXac".
  const std::vector<BpeMerge> merges = bpe_train("aaabdaaabac", 10);
  ASSERT_EQ(merges.size(), 3u);  // after that every pair occurs once (below min_count 2)
  expect_same_merges(merges, {{'a', 'a', 256}, {'a', 'b', 257}, {256, 257, 258}});
  const Tokenizer tok = Tokenizer::from_merges(merges);
  EXPECT_EQ(tok.encode("aaabdaaabac"), (std::vector<int32_t>{258, 'd', 258, 'a', 'c'}));
  EXPECT_EQ(tok.token_bytes(258), "aaab");
  // Merges apply within a piece only: the space starts a new piece " aaab" -> ' ' can't join.
  EXPECT_EQ(tok.encode("aaab aaab"), (std::vector<int32_t>{258, ' ', 258}));
  // Left to right without overlap: "aaa" is Z a, never a Z.
  EXPECT_EQ(tok.encode("aaa"), (std::vector<int32_t>{256, 'a'}));
}

TEST(BpeTokenizer, TrainingMatchesANaiveImplementation) {
  MOELAB_NEED_CORPUS();
  const std::string text = testing::tinyshakespeare().substr(0, 30000) + mixed_text(300, 5);
  const int kMerges = 300;
  const NaiveBpe ref = naive_bpe(text, kMerges);
  const std::vector<BpeMerge> merges = bpe_train(text, kMerges);
  expect_same_merges(merges, ref.merges);
  // Encoding a training piece with the learned merges reproduces its training segmentation.
  const Tokenizer tok = Tokenizer::from_merges(merges);
  for (const auto& [word, segmentation] : ref.words) ASSERT_EQ(tok.encode(word), segmentation) << word;
}

TEST(BpeTokenizer, Trains4096OnTinyshakespeareInSecondsAndRoundTrips) {
  MOELAB_NEED_CORPUS();
  const std::string& text = testing::tinyshakespeare();
  BpeTrainStats stats;
  const Tokenizer tok = Tokenizer::train_bpe(text, 4096, {kEndOfText}, &stats);
  std::printf("[ bpe      ] tinyshakespeare (%zu bytes): %lld merges from %lld distinct of %lld pieces in %.3f s\n",
              text.size(), static_cast<long long>(stats.num_merges), static_cast<long long>(stats.num_distinct),
              static_cast<long long>(stats.num_words), stats.seconds);
  EXPECT_EQ(tok.vocab_size(), 4096);
  EXPECT_EQ(stats.num_merges, 4096 - 256 - 1);
  EXPECT_EQ(tok.eot_id(), 4095);
  EXPECT_LT(stats.seconds, 30.0) << "BPE training should take seconds, not minutes";

  const auto t0 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = tok.encode(text);
  const double enc_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[ bpe      ] encoded to %zu tokens (%.2f bytes/token) in %.3f s\n", ids.size(),
              static_cast<double>(text.size()) / ids.size(), enc_s);
  EXPECT_LT(ids.size(), text.size() / 3);  // a 4k BPE compresses English well over 3x
  EXPECT_EQ(tok.decode(ids), text);
  // Frequent words became single tokens, with their leading space.
  EXPECT_EQ(tok.encode(" the").size(), 1u);
  EXPECT_EQ(tok.encode(" and").size(), 1u);
}

TEST(BpeTokenizer, RoundTripsRandomBytesAndMixedText) {
  MOELAB_NEED_CORPUS();
  const Tokenizer tok = Tokenizer::train_bpe(testing::tinyshakespeare().substr(0, 200000) + mixed_text(2000, 3), 1000);
  for (uint64_t seed = 0; seed < 5; ++seed) {
    const std::string bytes = testing::random_bytes(20000, seed);
    EXPECT_EQ(tok.decode(tok.encode(bytes)), bytes) << "random bytes, seed " << seed;
    const std::string mixed = mixed_text(3000, 100 + seed);
    EXPECT_EQ(tok.decode(tok.encode(mixed)), mixed) << "mixed text, seed " << seed;
    EXPECT_EQ(tok.decode(tok.encode_with_special(mixed)), mixed) << "mixed text with specials, seed " << seed;
  }
  // One long piece (no white space, 100k bytes) must not take quadratic time.
  const std::string dashes(100000, '-');
  EXPECT_EQ(tok.decode(tok.encode(dashes)), dashes);
}

TEST(BpeTokenizer, SpecialTokensOnlyFromEncodeWithSpecial) {
  const Tokenizer tok = Tokenizer::train_bpe("ab ab ab abc abc", 300, {kEndOfText, "<|pad|>"});
  const int32_t eot = tok.eot_id(), pad = tok.special_id("<|pad|>");
  EXPECT_EQ(eot, tok.vocab_size() - 2);
  EXPECT_EQ(pad, tok.vocab_size() - 1);
  EXPECT_TRUE(tok.is_special(eot));
  EXPECT_FALSE(tok.is_special(0));
  const std::string text = "ab<|endoftext|>abc<|pad|>";
  const std::vector<int32_t> with = tok.encode_with_special(text);
  EXPECT_EQ(std::count(with.begin(), with.end(), eot), 1);
  EXPECT_EQ(with.back(), pad);
  const std::vector<int32_t> plain = tok.encode(text);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), eot), 0);  // the spelling is ordinary text here
  EXPECT_EQ(tok.decode(with), text);
  EXPECT_EQ(tok.decode(plain), text);
  expect_error([&] { Tokenizer::train_bpe("x", 256); }, "vocab_size 256 is below the 256 bytes + 1 special");
  expect_error([&] { Tokenizer::build_byte({"<a>", "<a>"}); }, "given twice");
}

// --- tokenizer.json ---

void expect_same_tokenizer(const Tokenizer& a, const Tokenizer& b, const std::string& text) {
  EXPECT_EQ(a.kind(), b.kind());
  EXPECT_EQ(a.vocab_size(), b.vocab_size());
  EXPECT_EQ(a.special_tokens(), b.special_tokens());
  for (int32_t id = 0; id < a.vocab_size(); ++id) ASSERT_EQ(a.token_bytes(id), b.token_bytes(id)) << "id " << id;
  EXPECT_EQ(a.encode_with_special(text), b.encode_with_special(text));
}

TEST(TokenizerJson, SavesAndLoadsEveryKind) {
  MOELAB_NEED_CORPUS();
  const std::string dir = testing::scratch_dir("tokenizer_json");
  const std::string text = testing::tinyshakespeare().substr(0, 100000);
  const std::string probe = text.substr(5000, 3000) + "<|endoftext|>" + text.substr(100, 50);
  const std::vector<std::pair<std::string, Tokenizer>> cases = {
      {"char", Tokenizer::build_char(text)},
      {"char_special", Tokenizer::build_char(text + "<|endoftext|>", {kEndOfText})},
      {"byte", Tokenizer::build_byte()},
      {"bpe", Tokenizer::train_bpe(text, 600)}};
  for (const auto& [name, tok] : cases) {
    SCOPED_TRACE(name);
    const std::string path = dir + "/" + name + ".json";
    tok.save(path);
    const Tokenizer back = Tokenizer::load(path);
    // The plain char alphabet of the text has no '<': probe it with the text alone.
    expect_same_tokenizer(tok, back, name == "char" ? text.substr(5000, 3000) : probe);
  }
  // The file is a Hugging Face byte-level BPE: spot-check the fields `tokenizers` reads.
  const nlohmann::ordered_json j = cases[3].second.to_json();
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["vocab"]["\xC4\xA0"], 32);  // ' ' is written 'Ġ'
  EXPECT_EQ(j["model"]["merges"].size(), 600u - 256 - 1);
  EXPECT_EQ(j["pre_tokenizer"]["type"], "ByteLevel");
  EXPECT_EQ(j["pre_tokenizer"]["add_prefix_space"], false);
  EXPECT_EQ(j["pre_tokenizer"]["use_regex"], true);
  EXPECT_EQ(j["decoder"]["type"], "ByteLevel");
  EXPECT_EQ(j["added_tokens"][0]["content"], kEndOfText);
  EXPECT_EQ(j["added_tokens"][0]["id"], 599);
  EXPECT_EQ(j["added_tokens"][0]["special"], true);
}

TEST(TokenizerJson, ReadsMergesInEitherFormAndRejectsWhatItCannotHonour) {
  nlohmann::ordered_json j = Tokenizer::train_bpe("aaabdaaabac", 259 + 1).to_json();
  // tokenizers >= 0.20 writes merges as pairs: both forms load to the same tokenizer.
  nlohmann::ordered_json pairs = nlohmann::ordered_json::array();
  for (const auto& m : j["model"]["merges"]) {
    const std::string s = m.get<std::string>();
    pairs.push_back({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
  }
  nlohmann::ordered_json k = j;
  k["model"]["merges"] = pairs;
  EXPECT_EQ(Tokenizer::from_json(k, "pairs").encode("aaabdaaabac"), (std::vector<int32_t>{258, 'd', 258, 'a', 'c'}));

  const auto with = [&](const std::function<void(nlohmann::ordered_json&)>& edit) {
    nlohmann::ordered_json bad = j;
    edit(bad);
    return [bad] { Tokenizer::from_json(bad, "bad.json"); };
  };
  expect_error(with([](auto& b) { b["model"]["type"] = "WordPiece"; }), "bad.json: model type \"WordPiece\"");
  expect_error(with([](auto& b) { b["normalizer"] = {{"type", "NFC"}}; }), "normalizer");
  expect_error(with([](auto& b) { b["pre_tokenizer"]["add_prefix_space"] = true; }), "add_prefix_space is true");
  expect_error(with([](auto& b) { b["model"]["vocab"].erase("a"); }), "no token has id 97");
  expect_error(with([](auto& b) { b["model"]["vocab"]["zz"] = 3; }), "vocab id 3 used twice");
  expect_error(with([](auto& b) { b["model"]["merges"].push_back("a q"); }), "merge 3 (\"a\", \"q\")");
  // Found while writing the fuzz harness (tests/fuzz/fuzz_tokenizer.cpp): a flag of another type
  // was a JSON library exception, and a huge id made the reader allocate tables of 2^31 entries
  // before finding the gap.
  expect_error(with([](auto& b) { b["pre_tokenizer"]["use_regex"] = "yes"; }),
               "bad.json: pre_tokenizer use_regex is \"yes\", expected true or false");
  expect_error(with([](auto& b) { b["model"]["ignore_merges"] = 1; }), "model ignore_merges is 1, expected true or false");
  expect_error(with([](auto& b) { b["pre_tokenizer"]["type"] = 7; }), "pre_tokenizer {");
  expect_error(with([](auto& b) { b["model"]["vocab"]["zz"] = 2147483647; }), "no token has id 260, expected ids 0..2147483647");
  expect_error([] { Tokenizer::load("/nonexistent/tokenizer.json"); }, "/nonexistent/tokenizer.json: cannot open");
}

}  // namespace
}  // namespace moelab
