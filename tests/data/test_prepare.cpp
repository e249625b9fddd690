// `prepare` end to end on slices of tinyshakespeare: the split rule, the files it writes, that
// the shards decode back to the text, that the loader reads them, and meta.json read back.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "data/loader.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "tests/data/data_test_util.h"
#include "tests/harness.h"

namespace moelab {
namespace {

using testing::expect_error;

std::vector<int32_t> read_all(const std::vector<std::string>& shards, int64_t vocab) {
  std::vector<int32_t> out;
  for (const std::string& s : shards) {
    const std::vector<int32_t> t = read_shard(s, vocab);
    out.insert(out.end(), t.begin(), t.end());
  }
  return out;
}

TEST(Prepare, CharSplitsTheLastTenthIntoValidation) {
  MOELAB_NEED_CORPUS();
  const std::string dir = testing::scratch_dir("prepare_char");
  const std::string slice = testing::tinyshakespeare().substr(0, 100000);
  testing::write_bytes(dir + "/input.txt", slice);
  PrepareOptions o;
  o.inputs = {dir + "/input.txt"};
  o.out_dir = dir + "/out";
  o.kind = TokenizerKind::Char;
  o.val_fraction = 0.1;
  const PrepareSummary r = prepare(o);

  EXPECT_EQ(r.split_byte, 90000);  // int(100000 * 0.9), as nanoGPT
  EXPECT_EQ(r.train_tokens, 90000);  // one token per byte, no specials for char
  EXPECT_EQ(r.val_tokens, 10000);
  ASSERT_EQ(r.train_shards.size(), 1u);
  ASSERT_EQ(r.val_shards.size(), 1u);
  EXPECT_EQ(std::filesystem::path(r.train_shards[0]).filename(), "train_000.bin");
  EXPECT_EQ(std::filesystem::path(r.val_shards[0]).filename(), "val_000.bin");
  const Tokenizer tok = Tokenizer::load(r.tokenizer_path);
  EXPECT_EQ(tok.kind(), TokenizerKind::Char);
  EXPECT_EQ(tok.vocab_size(), r.vocab_size);
  EXPECT_EQ(tok.decode(read_all(r.train_shards, r.vocab_size)), slice.substr(0, 90000));
  EXPECT_EQ(tok.decode(read_all(r.val_shards, r.vocab_size)), slice.substr(90000));

  const nlohmann::ordered_json meta = nlohmann::ordered_json::parse(testing::read_bytes(r.meta_path));
  EXPECT_EQ(meta["tokenizer"]["kind"], "char");
  EXPECT_EQ(meta["tokenizer"]["vocab_size"], r.vocab_size);
  EXPECT_EQ(meta["split"]["split_byte"], 90000);
  EXPECT_EQ(meta["split"]["val_fraction"], 0.1);
  EXPECT_EQ(meta["sources"][0]["bytes"], 100000);
  EXPECT_EQ(meta["shards"]["magic"], kShardMagicU16);
  EXPECT_EQ(meta["train"]["tokens"], 90000);

  const PrepareSummary back = read_prepared(o.out_dir);
  EXPECT_EQ(back.kind, TokenizerKind::Char);
  EXPECT_EQ(back.vocab_size, r.vocab_size);
  EXPECT_EQ(back.train_shards, r.train_shards);
  EXPECT_EQ(back.val_shards, r.val_shards);
  EXPECT_EQ(back.train_tokens, r.train_tokens);

  // The loader serves the prepared shards.
  LoaderConfig c;
  c.shards = back.train_shards;
  c.vocab_size = back.vocab_size;
  c.batch_size = 4;
  c.window = 65;
  Loader l(c);
  const Tensor batch = l.next();
  const std::string row = tok.decode(batch.data<int32_t>(), 65);
  EXPECT_NE(slice.find(row), std::string::npos) << "a window is a piece of the text";
}

TEST(Prepare, BpeWithSeveralFilesAndShards) {
  MOELAB_NEED_CORPUS();
  const std::string dir = testing::scratch_dir("prepare_bpe");
  const std::string& text = testing::tinyshakespeare();
  const std::string a = text.substr(0, 60000), b = text.substr(60000, 40000);
  testing::write_bytes(dir + "/a.txt", a);
  testing::write_bytes(dir + "/b.txt", b);
  PrepareOptions o;
  o.inputs = {dir + "/a.txt", dir + "/b.txt"};
  o.out_dir = dir + "/out";
  o.kind = TokenizerKind::Bpe;
  o.vocab_size = 512;
  o.val_fraction = 0.25;  // split at byte 75000: inside b.txt
  o.shard_tokens = 10000;
  const PrepareSummary r = prepare(o);
  EXPECT_EQ(r.vocab_size, 512);
  EXPECT_EQ(r.split_byte, 75000);
  EXPECT_GT(r.train_shards.size(), 1u);
  for (size_t i = 0; i + 1 < r.train_shards.size(); ++i) EXPECT_EQ(read_shard_info(r.train_shards[i]).num_tokens, 10000);

  const Tokenizer tok = Tokenizer::load(r.tokenizer_path);
  EXPECT_EQ(tok.kind(), TokenizerKind::Bpe);
  const int32_t eot = tok.eot_id();
  ASSERT_EQ(eot, 511);
  // Train: <eot> a <eot> head of b. Val: the tail of b, without <eot> (b started in train).
  const std::vector<int32_t> train = read_all(r.train_shards, r.vocab_size);
  const std::vector<int32_t> val = read_all(r.val_shards, r.vocab_size);
  EXPECT_EQ(train.size(), static_cast<size_t>(r.train_tokens));
  EXPECT_EQ(std::count(train.begin(), train.end(), eot), 2);
  EXPECT_EQ(train[0], eot);
  EXPECT_EQ(std::count(val.begin(), val.end(), eot), 0);
  EXPECT_EQ(tok.decode(train), std::string(kEndOfText) + a + kEndOfText + b.substr(0, 15000));
  EXPECT_EQ(tok.decode(val), b.substr(15000));
  EXPECT_EQ(val, tok.encode(b.substr(15000)));
}

// Tokenizers take any bytes, so a binary input is prepared, with a warning naming the file; UTF-8
// text (accents, emoji) gets none.
TEST(Prepare, WarnsWhenAnInputIsNotText) {
  const std::string dir = testing::scratch_dir("prepare_binary");
  std::string binary;
  for (int i = 0; i < 5000; ++i) binary += static_cast<char>((i * 131) & 0xff);
  testing::write_bytes(dir + "/blob.bin", binary);
  testing::write_bytes(dir + "/text.txt", std::string("caf\xc3\xa9 na\xc3\xafve \xf0\x9f\x99\x82\n") + std::string(3000, 'a'));
  PrepareOptions o;
  o.inputs = {dir + "/text.txt"};
  o.out_dir = dir + "/out_text";
  o.kind = TokenizerKind::Byte;
  o.val_fraction = 0.1;
  EXPECT_TRUE(prepare(o).warnings.empty());
  o.inputs = {dir + "/text.txt", dir + "/blob.bin"};
  o.out_dir = dir + "/out_binary";
  const PrepareSummary r = prepare(o);
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("blob.bin does not look like text: 20 NUL bytes"), std::string::npos) << r.warnings[0];
}

TEST(Prepare, RejectsBadOptions) {
  PrepareOptions o;
  o.out_dir = testing::scratch_dir("prepare_bad");
  expect_error([&] { prepare(o); }, "no input files");
  o.inputs = {o.out_dir + "/missing.txt"};
  expect_error([&] { prepare(o); }, "cannot open input file");
  o.val_fraction = 1.0;
  expect_error([&] { prepare(o); }, "val_fraction 1, expected 0 <= val_fraction < 1");
  expect_error([&] { read_prepared(o.out_dir); }, "meta.json: cannot open");
}

}  // namespace
}  // namespace moelab
