// `moelab prepare` as a library function (prepare.h): read, split, build the tokenizer, encode,
// write shards and meta.json.
#include "data/prepare.h"

#include "data/unicode.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "core/check.h"
#include "data/shard.h"
#include "data/unicode.h"

namespace moelab {

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOELAB_CHECK(in, "prepare: cannot open input file ", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  MOELAB_CHECK(in.good() || in.eof(), "prepare: read error in ", path);
  return ss.str();
}

// "" for text; else why `path` (its bytes: `data`) looks like a binary file: NUL bytes, or more than
// 1% of its first 64 KiB not UTF-8. Tokenizers take any bytes, so this is a warning, not an error.
std::string not_text(const std::string& path, std::string_view data) {
  const std::string_view head = data.substr(0, 64 << 10);
  int64_t nul = 0, invalid = 0;
  for (size_t i = 0; i < head.size();) {
    const unicode::Utf8Char c = unicode::next_utf8(head, i);
    nul += c.cp == 0;
    // A character cut by the 64 KiB boundary is not an error.
    invalid += c.cp == unicode::kInvalid && i + 4 < head.size();
    i += static_cast<size_t>(c.len);
  }
  if (nul == 0 && invalid * 100 <= static_cast<int64_t>(head.size())) return "";
  return path + " does not look like text: " + std::to_string(nul) + " NUL bytes and " + std::to_string(invalid) +
         " bytes that are not UTF-8 in its first " + std::to_string(head.size()) + " bytes (a binary file?)";
}

// A document's part on one side of the split: bytes [begin, end) of the joined text, and whether
// it starts where the document starts (only then does it get the <|endoftext|> in front).
struct Segment {
  int64_t begin, end;
  bool doc_start;
};

std::vector<int32_t> encode_segments(const Tokenizer& tok, const std::string& text, const std::vector<Segment>& segs) {
  const int32_t eot = tok.eot_id();
  std::vector<int32_t> out;
  for (const Segment& s : segs) {
    if (eot >= 0 && s.doc_start) out.push_back(eot);
    const std::vector<int32_t> ids = tok.encode(std::string_view(text).substr(s.begin, s.end - s.begin));
    out.insert(out.end(), ids.begin(), ids.end());
  }
  return out;
}

// Writes tokens as PREFIX_000.bin, PREFIX_001.bin, ... of at most shard_tokens each; returns the names.
std::vector<std::string> write_shards(const std::string& dir, const std::string& prefix,
                                      const std::vector<int32_t>& tokens, int64_t shard_tokens, int64_t vocab_size) {
  std::vector<std::string> names;
  for (size_t begin = 0; begin < tokens.size(); begin += static_cast<size_t>(shard_tokens)) {
    const size_t n = std::min(tokens.size() - begin, static_cast<size_t>(shard_tokens));
    char name[64];
    std::snprintf(name, sizeof(name), "%s_%03zu.bin", prefix.c_str(), names.size());
    write_shard((fs::path(dir) / name).string(), tokens.data() + begin, n, vocab_size);
    names.push_back(name);
  }
  return names;
}

}  // namespace

PrepareSummary prepare(const PrepareOptions& o) {
  const auto t_start = Clock::now();
  MOELAB_CHECK(!o.inputs.empty(), "prepare: no input files");
  MOELAB_CHECK(!o.out_dir.empty(), "prepare: no output directory");
  MOELAB_CHECK(o.val_fraction >= 0 && o.val_fraction < 1, "prepare: val_fraction ", o.val_fraction,
               ", expected 0 <= val_fraction < 1");
  MOELAB_CHECK(o.shard_tokens >= 1 && o.shard_tokens < (int64_t{1} << 31), "prepare: shard_tokens ", o.shard_tokens,
               ", expected 1 <= shard_tokens < 2^31 (the shard header counts tokens in an int32)");

  // 1. Read and join the inputs; each file is one document.
  std::string text;
  std::vector<std::pair<int64_t, int64_t>> docs;  // [begin, end) in text
  std::vector<std::string> warnings;
  for (const std::string& path : o.inputs) {
    const int64_t begin = static_cast<int64_t>(text.size());
    text += read_file(path);
    docs.emplace_back(begin, static_cast<int64_t>(text.size()));
    const std::string warning = not_text(path, std::string_view(text).substr(static_cast<size_t>(begin)));
    if (!warning.empty()) warnings.push_back(warning);
  }
  const int64_t total = static_cast<int64_t>(text.size());
  MOELAB_CHECK(total > 0, "prepare: the input files are empty");

  // 2. The split: the last val_fraction of the bytes is validation (nanoGPT: data[int(n * 0.9):]).
  const int64_t split = static_cast<int64_t>(std::floor(static_cast<double>(total) * (1.0 - o.val_fraction)));
  MOELAB_CHECK(split > 0, "prepare: val_fraction ", o.val_fraction, " of ", total,
               " bytes leaves no training text");
  std::vector<Segment> train_segs, val_segs;
  for (const auto& [b, e] : docs) {
    if (b < split) train_segs.push_back({b, std::min(e, split), true});
    if (e > split) val_segs.push_back({std::max(b, split), e, b >= split});
  }

  // 3. The tokenizer, from the training text (char: the alphabet of all text, see prepare.h).
  const auto t_tok = Clock::now();
  const std::vector<std::string> specials =
      o.specials ? *o.specials
                 : (o.kind == TokenizerKind::Bpe ? std::vector<std::string>{kEndOfText} : std::vector<std::string>{});
  Tokenizer tok;
  BpeTrainStats stats;
  switch (o.kind) {
    case TokenizerKind::Char: tok = Tokenizer::build_char(text, specials); break;
    case TokenizerKind::Byte: tok = Tokenizer::build_byte(specials); break;
    case TokenizerKind::Bpe: {
      std::vector<std::string_view> train_texts;
      for (const Segment& s : train_segs) train_texts.push_back(std::string_view(text).substr(s.begin, s.end - s.begin));
      tok = Tokenizer::train_bpe(train_texts, o.vocab_size, specials, &stats);
      break;
    }
  }
  PrepareSummary r;
  r.warnings = warnings;
  r.tokenizer_seconds = seconds_since(t_tok);
  if (o.verbose) {
    std::cout << "prepare: " << tokenizer_kind_name(o.kind) << " tokenizer with " << tok.vocab_size() << " tokens";
    if (o.kind == TokenizerKind::Bpe)
      std::cout << " (" << stats.num_merges << " merges from " << stats.num_distinct << " distinct of "
                << stats.num_words << " pieces)";
    std::cout << " in " << r.tokenizer_seconds << " s\n";
  }

  // 4. Encode both splits and write everything.
  fs::create_directories(o.out_dir);
  const std::vector<int32_t> train = encode_segments(tok, text, train_segs);
  const std::vector<int32_t> val = encode_segments(tok, text, val_segs);
  r.out_dir = o.out_dir;
  r.kind = o.kind;
  r.vocab_size = tok.vocab_size();
  r.total_bytes = total;
  r.split_byte = split;
  r.train_tokens = static_cast<int64_t>(train.size());
  r.val_tokens = static_cast<int64_t>(val.size());
  r.tokenizer_path = (fs::path(o.out_dir) / "tokenizer.json").string();
  r.meta_path = (fs::path(o.out_dir) / "meta.json").string();
  tok.save(r.tokenizer_path);
  const std::vector<std::string> train_names = write_shards(o.out_dir, "train", train, o.shard_tokens, r.vocab_size);
  const std::vector<std::string> val_names = write_shards(o.out_dir, "val", val, o.shard_tokens, r.vocab_size);
  for (const auto& n : train_names) r.train_shards.push_back((fs::path(o.out_dir) / n).string());
  for (const auto& n : val_names) r.val_shards.push_back((fs::path(o.out_dir) / n).string());

  using json = nlohmann::ordered_json;
  json sources = json::array();
  for (size_t i = 0; i < o.inputs.size(); ++i)
    sources.push_back({{"path", o.inputs[i]}, {"bytes", docs[i].second - docs[i].first}});
  const int tb = shard_token_bytes(r.vocab_size);
  json meta = {
      {"format", "moelab-data"},
      {"version", 1},
      {"tokenizer",
       {{"kind", tokenizer_kind_name(o.kind)},
        {"file", "tokenizer.json"},
        {"vocab_size", r.vocab_size},
        {"requested_vocab_size", o.kind == TokenizerKind::Bpe ? json(o.vocab_size) : json(nullptr)},
        {"special_tokens", tok.special_tokens()},
        {"eot_id", tok.eot_id() >= 0 ? json(tok.eot_id()) : json(nullptr)},
        {"seconds", r.tokenizer_seconds}}},
      {"shards",
       {{"layout", "llm.c"},
        {"magic", tb == 2 ? kShardMagicU16 : kShardMagicU32},
        {"version", tb == 2 ? kShardVersionU16 : kShardVersionU32},
        {"token_bytes", tb},
        {"max_tokens_per_shard", o.shard_tokens}}},
      {"split",
       {{"rule", "the last val_fraction of the joined input bytes is validation, the rest training"},
        {"val_fraction", o.val_fraction},
        {"total_bytes", total},
        {"split_byte", split}}},
      {"documents", "each input file is a document; its tokens are preceded by <|endoftext|> when the tokenizer has it"},
      {"sources", sources},
      {"train", {{"tokens", r.train_tokens}, {"shards", train_names}}},
      {"val", {{"tokens", r.val_tokens}, {"shards", val_names}}}};
  {
    const std::string tmp = r.meta_path + ".tmp";
    std::ofstream out(tmp, std::ios::trunc);
    MOELAB_CHECK(out, tmp, ": cannot open for writing");
    out << meta.dump(2) << "\n";
    out.flush();
    MOELAB_CHECK(out, tmp, ": write failed (disk full?)");
    out.close();
    MOELAB_CHECK(std::rename(tmp.c_str(), r.meta_path.c_str()) == 0, "cannot rename ", tmp, " to ", r.meta_path);
  }
  r.total_seconds = seconds_since(t_start);
  if (o.verbose)
    std::cout << "prepare: " << r.train_tokens << " train tokens in " << train_names.size() << " shard(s), "
              << r.val_tokens << " val tokens in " << val_names.size() << " shard(s) -> " << o.out_dir << " ("
              << r.total_seconds << " s)\n";
  return r;
}

PrepareSummary read_prepared(const std::string& dir) {
  const std::string path = (fs::path(dir) / "meta.json").string();
  std::ifstream in(path);
  MOELAB_CHECK(in, path, ": cannot open (run `moelab prepare` to make it)");
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::ordered_json::exception& e) {
    MOELAB_FAIL(path, ": not valid JSON: ", e.what());
  }
  try {
    MOELAB_CHECK(j.value("format", "") == "moelab-data", path, ": format ", j.value("format", "(missing)"),
                 ", expected moelab-data");
    PrepareSummary r;
    r.out_dir = dir;
    r.meta_path = path;
    const auto& t = j.at("tokenizer");
    r.kind = parse_tokenizer_kind(t.at("kind").get<std::string>());
    r.vocab_size = t.at("vocab_size").get<int64_t>();
    r.tokenizer_path = (fs::path(dir) / t.at("file").get<std::string>()).string();
    r.tokenizer_seconds = t.value("seconds", 0.0);
    r.total_bytes = j.at("split").at("total_bytes").get<int64_t>();
    r.split_byte = j.at("split").at("split_byte").get<int64_t>();
    r.train_tokens = j.at("train").at("tokens").get<int64_t>();
    r.val_tokens = j.at("val").at("tokens").get<int64_t>();
    for (const auto& n : j.at("train").at("shards")) r.train_shards.push_back((fs::path(dir) / n.get<std::string>()).string());
    for (const auto& n : j.at("val").at("shards")) r.val_shards.push_back((fs::path(dir) / n.get<std::string>()).string());
    return r;
  } catch (const nlohmann::ordered_json::exception& e) {
    MOELAB_FAIL(path, ": missing or mistyped field: ", e.what());
  }
}

}  // namespace moelab
