// Tokenizers (tokenizer.h): building the three kinds, encoding and decoding, and the Hugging Face
// tokenizer.json format.
#include "data/tokenizer.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iomanip>
#include <sstream>

#include "core/check.h"
#include "data/pretokenize.h"
#include "data/unicode.h"

namespace moelab {

namespace {

std::string hex_byte(unsigned char b) {
  std::ostringstream os;
  os << "0x" << std::hex << std::setw(2) << std::setfill('0') << static_cast<int>(b);
  return os.str();
}

// Printable excerpt of a spelling for error messages (invalid bytes as \xNN).
std::string printable(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s.substr(0, 40)) {
    if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') out += static_cast<char>(c);
    else out += "\\x" + hex_byte(c).substr(2);
  }
  return out + (s.size() > 40 ? "...\"" : "\"");
}

bool valid_utf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const unicode::Utf8Char c = unicode::next_utf8(s, i);
    if (c.cp == unicode::kInvalid) return false;
    i += static_cast<size_t>(c.len);
  }
  return true;
}

// The JSON string of a token: its bytes in GPT-2's visible alphabet.
std::string visible(const std::string& bytes) { return unicode::bytes_to_visible(bytes); }

const nlohmann::ordered_json& member(const nlohmann::ordered_json& j, const char* key, const std::string& where,
                                     const char* what) {
  MOELAB_CHECK(j.is_object() && j.contains(key), where, ": ", what, " has no \"", key, "\"");
  return j[key];
}

bool is_null_or(const nlohmann::ordered_json& j, const char* key, const nlohmann::ordered_json& ok) {
  return !j.contains(key) || j[key].is_null() || j[key] == ok;
}

// An optional boolean member (absent or null: the fallback); another type is an error naming it.
bool bool_member(const nlohmann::ordered_json& j, const char* key, bool fallback, const std::string& where,
                 const char* what) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  MOELAB_CHECK(j[key].is_boolean(), where, ": ", what, " ", key, " is ", j[key].dump(), ", expected true or false");
  return j[key].get<bool>();
}

}  // namespace

const char* tokenizer_kind_name(TokenizerKind kind) {
  switch (kind) {
    case TokenizerKind::Char: return "char";
    case TokenizerKind::Byte: return "byte";
    case TokenizerKind::Bpe: return "bpe";
  }
  return "?";
}

TokenizerKind parse_tokenizer_kind(const std::string& name) {
  if (name == "char") return TokenizerKind::Char;
  if (name == "byte") return TokenizerKind::Byte;
  if (name == "bpe") return TokenizerKind::Bpe;
  MOELAB_FAIL("tokenizer kind '", name, "': expected char, byte or bpe");
}

// --- building -------------------------------------------------------------------------------------

Tokenizer Tokenizer::build_char(std::string_view text, const std::vector<std::string>& specials) {
  std::array<bool, 256> seen{};
  for (unsigned char b : text) seen[b] = true;
  Tokenizer t;
  t.kind_ = TokenizerKind::Char;
  for (int b = 0; b < 256; ++b)
    if (seen[b]) t.tokens_.emplace_back(1, static_cast<char>(b));
  MOELAB_CHECK(!t.tokens_.empty(), "char tokenizer: the text is empty, so there is no alphabet to build");
  t.add_specials(specials);
  t.finish();
  return t;
}

Tokenizer Tokenizer::build_byte(const std::vector<std::string>& specials) {
  Tokenizer t;
  t.kind_ = TokenizerKind::Byte;
  for (int b = 0; b < 256; ++b) t.tokens_.emplace_back(1, static_cast<char>(b));
  t.add_specials(specials);
  t.finish();
  return t;
}

Tokenizer Tokenizer::train_bpe(const std::vector<std::string_view>& texts, int64_t vocab_size,
                               const std::vector<std::string>& specials, BpeTrainStats* stats) {
  const int64_t base = 256 + static_cast<int64_t>(specials.size());
  MOELAB_CHECK(vocab_size >= base, "bpe tokenizer: vocab_size ", vocab_size, " is below the 256 bytes + ",
               specials.size(), " special tokens = ", base);
  return from_merges(bpe_train(texts, vocab_size - base, /*min_count=*/2, stats), specials);
}

Tokenizer Tokenizer::from_merges(const std::vector<BpeMerge>& merges, const std::vector<std::string>& specials) {
  Tokenizer t;
  t.kind_ = TokenizerKind::Bpe;
  for (int b = 0; b < 256; ++b) t.tokens_.emplace_back(1, static_cast<char>(b));
  for (size_t i = 0; i < merges.size(); ++i) {
    const BpeMerge& m = merges[i];
    const int32_t id = static_cast<int32_t>(256 + i);
    MOELAB_CHECK(m.result == id && m.left >= 0 && m.left < id && m.right >= 0 && m.right < id,
                 "bpe tokenizer: merge ", i, " is (", m.left, ", ", m.right, ") -> ", m.result,
                 ", expected two existing ids below ", id, " merging into ", id);
    t.tokens_.push_back(t.tokens_[m.left] + t.tokens_[m.right]);
  }
  t.merges_ = merges;
  t.add_specials(specials);
  t.finish();
  return t;
}

void Tokenizer::add_specials(const std::vector<std::string>& specials) {
  for (const std::string& s : specials) {
    MOELAB_CHECK(!s.empty() && valid_utf8(s), "tokenizer: special token ", printable(s),
                 " must be non-empty valid UTF-8 (tokenizer.json stores it as a string)");
    MOELAB_CHECK(std::find(specials_.begin(), specials_.end(), s) == specials_.end(), "tokenizer: special token ",
                 printable(s), " given twice");
    tokens_.push_back(s);
    specials_.push_back(s);
  }
  special_.assign(tokens_.size(), false);
  for (size_t i = tokens_.size() - specials.size(); i < tokens_.size(); ++i) special_[i] = true;
}

void Tokenizer::finish() {
  byte_id_.fill(-1);
  special_.resize(tokens_.size(), false);
  specials_.clear();
  special_ids_.clear();
  for (size_t id = 0; id < tokens_.size(); ++id) {
    if (!special_[id]) continue;
    specials_.push_back(tokens_[id]);
    special_ids_.push_back(static_cast<int32_t>(id));
  }
  for (size_t id = 0; id < tokens_.size(); ++id)
    if (!special_[id] && tokens_[id].size() == 1 && byte_id_[static_cast<unsigned char>(tokens_[id][0])] < 0)
      byte_id_[static_cast<unsigned char>(tokens_[id][0])] = static_cast<int32_t>(id);
  merge_table_ = BpeMergeTable(merges_);
  piece_id_.clear();
  if (ignore_merges_)
    for (size_t id = 0; id < tokens_.size(); ++id)
      if (!special_[id]) piece_id_.emplace(tokens_[id], static_cast<int32_t>(id));
}

// --- encoding and decoding ------------------------------------------------------------------------

const std::string& Tokenizer::token_bytes(int32_t id) const {
  MOELAB_CHECK(id >= 0 && id < vocab_size(), "tokenizer (", tokenizer_kind_name(kind_), "): token id ", id,
               " outside the vocabulary [0, ", vocab_size(), ")");
  return tokens_[id];
}

bool Tokenizer::is_special(int32_t id) const { return id >= 0 && id < vocab_size() && special_[id]; }

int32_t Tokenizer::special_id(std::string_view spelling) const {
  for (size_t k = 0; k < specials_.size(); ++k)
    if (specials_[k] == spelling) return special_ids_[k];
  return -1;
}

void Tokenizer::encode_ordinary(std::string_view bytes, size_t offset, std::vector<int32_t>& out) const {
  if (merges_.empty() && !ignore_merges_) {
    // char and byte: one token per byte.
    for (size_t i = 0; i < bytes.size(); ++i) {
      const unsigned char b = static_cast<unsigned char>(bytes[i]);
      const int32_t id = byte_id_[b];
      MOELAB_CHECK(id >= 0, "tokenizer (", tokenizer_kind_name(kind_), ", ", vocab_size(), " tokens): byte ",
                   hex_byte(b), " at position ", offset + i, " is not in the vocabulary (a char alphabet holds only the "
                   "bytes of the text it was built from)");
      out.push_back(id);
    }
    return;
  }
  // bpe: merge within each piece. Text repeats its words, so each distinct piece is merged once
  // per call and looked up afterwards.
  std::unordered_map<std::string_view, std::vector<int32_t>> cache;
  std::vector<int32_t> symbols;
  const auto encode_piece = [&](std::string_view piece) {
    if (ignore_merges_) {
      const auto it = piece_id_.find(std::string(piece));
      if (it != piece_id_.end()) {
        out.push_back(it->second);
        return;
      }
    }
    const auto hit = cache.find(piece);
    if (hit != cache.end()) {
      out.insert(out.end(), hit->second.begin(), hit->second.end());
      return;
    }
    symbols.clear();
    for (unsigned char b : piece) symbols.push_back(byte_id_[b]);  // all 256 exist (checked at load)
    bpe_merge_symbols(symbols, merge_table_);
    out.insert(out.end(), symbols.begin(), symbols.end());
    if (piece.size() <= 256 && cache.size() < (1u << 20)) cache.emplace(piece, symbols);
  };
  if (use_regex_) for_each_gpt2_piece(bytes, encode_piece);
  else if (!bytes.empty()) encode_piece(bytes);
}

std::vector<int32_t> Tokenizer::encode(std::string_view bytes) const {
  std::vector<int32_t> out;
  out.reserve(bytes.size() / 3 + 16);
  encode_ordinary(bytes, 0, out);
  return out;
}

std::vector<int32_t> Tokenizer::encode_with_special(std::string_view text) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 16);
  // next_at[k]: where special k is spelled next at or after pos (recomputed once passed).
  std::vector<size_t> next_at(specials_.size(), 0);
  std::vector<bool> fresh(specials_.size(), false);
  size_t pos = 0;
  while (pos < text.size()) {
    // The next spelling of any special token; the longest one when several start there.
    size_t best = std::string_view::npos, best_k = 0;
    for (size_t k = 0; k < specials_.size(); ++k) {
      if (!fresh[k] || (next_at[k] != std::string_view::npos && next_at[k] < pos)) {
        next_at[k] = text.find(specials_[k], pos);
        fresh[k] = true;
      }
      if (next_at[k] == std::string_view::npos) continue;
      if (best == std::string_view::npos || next_at[k] < best ||
          (next_at[k] == best && specials_[k].size() > specials_[best_k].size())) {
        best = next_at[k];
        best_k = k;
      }
    }
    if (best == std::string_view::npos) {
      encode_ordinary(text.substr(pos), pos, out);
      break;
    }
    encode_ordinary(text.substr(pos, best - pos), pos, out);
    out.push_back(special_ids_[best_k]);
    pos = best + specials_[best_k].size();
  }
  return out;
}

std::string Tokenizer::decode(const int32_t* ids, size_t n) const {
  std::string out;
  out.reserve(n * 4);
  for (size_t i = 0; i < n; ++i) {
    MOELAB_CHECK(ids[i] >= 0 && ids[i] < vocab_size(), "tokenizer (", tokenizer_kind_name(kind_),
                 ") decode: id ", ids[i], " at position ", i, " is outside the vocabulary [0, ", vocab_size(), ")");
    out += tokens_[ids[i]];
  }
  return out;
}

// --- tokenizer.json -------------------------------------------------------------------------------

nlohmann::ordered_json Tokenizer::to_json() const {
  using json = nlohmann::ordered_json;
  json added = json::array();
  json vocab = json::object();
  for (size_t id = 0; id < tokens_.size(); ++id) {
    if (special_[id]) {
      added.push_back({{"id", id}, {"content", tokens_[id]}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", true}});
    } else {
      vocab[visible(tokens_[id])] = id;
    }
  }
  // "left right" strings: the visible alphabet has no space, and every `tokenizers` version reads this form.
  json merges = json::array();
  for (const BpeMerge& m : merges_) merges.push_back(visible(tokens_[m.left]) + " " + visible(tokens_[m.right]));
  // The regex split only matters when there are merges; char and byte map each byte on its own.
  const bool regex = !merges_.empty() && use_regex_;
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", regex}};
  json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", ignore_merges_},
                {"vocab", std::move(vocab)},
                {"merges", std::move(merges)}};
  return json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", std::move(added)},
              {"normalizer", nullptr},
              {"pre_tokenizer", byte_level},
              {"post_processor", nullptr},
              {"decoder", byte_level},
              {"model", std::move(model)}};
}

void Tokenizer::save(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MOELAB_CHECK(out, tmp, ": cannot open for writing");
    out << to_json().dump(2) << "\n";
    out.flush();
    MOELAB_CHECK(out, tmp, ": write failed (disk full?)");
  }
  MOELAB_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename ", tmp, " to ", path);
}

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOELAB_CHECK(in, path, ": cannot open the tokenizer for reading");
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(ss.str());
  } catch (const nlohmann::ordered_json::exception& e) {
    MOELAB_FAIL(path, ": not valid JSON: ", e.what());
  }
  return from_json(j, path);
}

Tokenizer Tokenizer::from_json(const nlohmann::ordered_json& j, const std::string& where) {
  using json = nlohmann::ordered_json;
  MOELAB_CHECK(j.is_object(), where, ": a tokenizer.json must be a JSON object");
  const json& model = member(j, "model", where, "the tokenizer");
  const json& type = member(model, "type", where, "\"model\"");
  MOELAB_CHECK(type == "BPE", where, ": model type ", type.dump(), ", expected \"BPE\" (byte-level BPE is the only "
               "model moelab reads)");
  MOELAB_CHECK(is_null_or(j, "normalizer", nullptr), where, ": normalizer ", j["normalizer"].dump(),
               ", expected null (moelab tokenizes raw bytes)");
  const json& pre = member(j, "pre_tokenizer", where, "the tokenizer");
  MOELAB_CHECK(pre.is_object() && pre.contains("type") && pre["type"] == "ByteLevel", where, ": pre_tokenizer ",
               pre.dump(), ", expected {\"type\": \"ByteLevel\", ...}");
  MOELAB_CHECK(!bool_member(pre, "add_prefix_space", false, where, "pre_tokenizer"), where,
               ": pre_tokenizer add_prefix_space is true, expected false");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    MOELAB_CHECK(is_null_or(model, key, ""), where, ": model ", key, " is ", model[key].dump(), ", expected null");
  MOELAB_CHECK(is_null_or(model, "dropout", 0.0), where, ": model dropout is ", model["dropout"].dump(),
               ", expected null");
  MOELAB_CHECK(is_null_or(model, "byte_fallback", false), where, ": model byte_fallback is true, expected false");

  Tokenizer t;
  t.use_regex_ = bool_member(pre, "use_regex", true, where, "pre_tokenizer");
  t.ignore_merges_ = bool_member(model, "ignore_merges", false, where, "model");

  // Every id in [0, V) must be named exactly once by the vocab or the added tokens.
  const json& vocab = member(model, "vocab", where, "\"model\"");
  MOELAB_CHECK(vocab.is_object(), where, ": model vocab must be an object {token: id}");
  const json added = j.contains("added_tokens") && !j["added_tokens"].is_null() ? j["added_tokens"] : json::array();
  MOELAB_CHECK(added.is_array(), where, ": added_tokens must be an array");
  int64_t max_id = -1;
  const auto id_of = [&](const json& v, const std::string& token) {
    MOELAB_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0 && v.get<int64_t>() < (int64_t{1} << 31), where,
                 ": token ", printable(token), " has id ", v.dump(), ", expected an integer in [0, 2^31)");
    return v.get<int64_t>();
  };
  for (auto it = vocab.begin(); it != vocab.end(); ++it) max_id = std::max(max_id, id_of(it.value(), it.key()));
  for (const json& a : added) {
    MOELAB_CHECK(a.is_object() && a.contains("id") && a.contains("content") && a["content"].is_string(), where,
                 ": added token ", a.dump(), " needs an id and a content string");
    max_id = std::max(max_id, id_of(a["id"], a["content"].get<std::string>()));
  }
  MOELAB_CHECK(max_id >= 0, where, ": empty vocabulary");
  // Every id in [0, V) must be named: the first gap is found among the names, before the tables of
  // V entries are allocated (a hostile id of 2^31 - 1 would otherwise cost gigabytes).
  std::vector<int64_t> ids;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) ids.push_back(it.value().get<int64_t>());
  for (const json& a : added) ids.push_back(a["id"].get<int64_t>());
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (size_t i = 0; i < ids.size(); ++i)
    MOELAB_CHECK(ids[i] == static_cast<int64_t>(i), where, ": no token has id ", i, ", expected ids 0..", max_id,
                 " without gaps");
  const size_t V = static_cast<size_t>(max_id + 1);
  t.tokens_.assign(V, std::string());
  t.special_.assign(V, false);
  std::vector<bool> named(V, false);
  std::unordered_map<std::string, int32_t> id_by_visible;
  for (const json& a : added) {  // added tokens first: a vocab entry with the same id defers to them
    const size_t id = static_cast<size_t>(a["id"].get<int64_t>());
    MOELAB_CHECK(!named[id], where, ": added token id ", id, " used twice");
    named[id] = true;
    t.special_[id] = true;
    t.tokens_[id] = a["content"].get<std::string>();
  }
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    const size_t id = static_cast<size_t>(it.value().get<int64_t>());
    id_by_visible[it.key()] = static_cast<int32_t>(id);
    if (t.special_[id]) continue;
    MOELAB_CHECK(!named[id], where, ": vocab id ", id, " used twice (second time by ", printable(it.key()), ")");
    named[id] = true;
    MOELAB_CHECK(unicode::visible_to_bytes(it.key(), &t.tokens_[id]), where, ": vocab token ", printable(it.key()),
                 " (id ", id, ") is not written in the byte-level alphabet (GPT-2's bytes_to_unicode)");
  }

  const json& merges = member(model, "merges", where, "\"model\"");
  MOELAB_CHECK(merges.is_array(), where, ": model merges must be an array");
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& m = merges[r];
    std::string left, right;
    if (m.is_string()) {  // "left right"
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      MOELAB_CHECK(space != std::string::npos && s.find(' ', space + 1) == std::string::npos, where, ": merge ", r,
                   " is ", printable(s), ", expected \"left right\"");
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else {  // ["left", "right"] (tokenizers >= 0.20)
      MOELAB_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), where, ": merge ", r,
                   " is ", m.dump(), ", expected \"left right\" or [\"left\", \"right\"]");
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    }
    const auto l = id_by_visible.find(left), rr = id_by_visible.find(right), res = id_by_visible.find(left + right);
    MOELAB_CHECK(l != id_by_visible.end() && rr != id_by_visible.end() && res != id_by_visible.end(), where,
                 ": merge ", r, " (", printable(left), ", ", printable(right), ") names a token that is not in the vocab");
    t.merges_.push_back({l->second, rr->second, res->second});
  }

  // The kind is not stored (tokenizer.json has no place for it): merges make a bpe; the 256 bytes
  // at ids 0..255 make a byte tokenizer; any other set of one-byte tokens is a char alphabet.
  t.finish();
  if (!t.merges_.empty() || t.ignore_merges_) {
    t.kind_ = TokenizerKind::Bpe;
    for (int b = 0; b < 256; ++b)
      MOELAB_CHECK(t.byte_id_[b] >= 0, where, ": byte ", hex_byte(static_cast<unsigned char>(b)),
                   " has no token, expected all 256 bytes in a byte-level BPE vocabulary");
  } else {
    bool identity = true;
    for (int b = 0; b < 256; ++b) identity = identity && t.byte_id_[b] == b;
    t.kind_ = identity ? TokenizerKind::Byte : TokenizerKind::Char;
    for (size_t id = 0; id < V; ++id)
      MOELAB_CHECK(t.special_[id] || t.tokens_[id].size() == 1, where, ": token ", id, " ", printable(t.tokens_[id]),
                   " has ", t.tokens_[id].size(), " bytes but there are no merges to build it");
  }
  return t;
}

}  // namespace moelab
