// Config files: the presets in examples/ (load, validate, round trips through TOML and JSON),
// TOML errors (unknown key or section, bad values, did-you-mean, validation, all naming the file),
// and `--set` overrides.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/harness.h"
#include "train/config_file.h"
#include "train/run_config.h"

namespace moelab {
namespace {

const std::vector<std::string> kPresets = {"tiny", "shakespeare_moe", "shakespeare_dense", "small", "v2lite_mini"};

std::string preset_path(const std::string& name) {
  return std::string(MOELAB_SOURCE_DIR) + "/examples/" + name + ".toml";
}

using moelab::testing::config_error;

// ---- presets ----

TEST(Presets, EveryPresetLoadsAndValidates) {
  for (const std::string& name : kPresets) {
    SCOPED_TRACE(name);
    RunConfig cfg;
    ASSERT_NO_THROW(cfg = load_config(preset_path(name)));
    EXPECT_NO_THROW(cfg.validate());
    EXPECT_NE(cfg.model, ModelConfig{}) << "the preset sets nothing";
  }
}

TEST(Presets, EveryTomlInExamplesIsAValidPreset) {
  // A preset added later is covered too.
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(MOELAB_SOURCE_DIR) + "/examples")) {
    if (entry.path().extension() != ".toml") continue;
    ++count;
    EXPECT_NO_THROW(load_config(entry.path().string())) << entry.path();
  }
  EXPECT_GE(count, static_cast<int>(kPresets.size()));
}

TEST(Presets, TomlRoundTrip) {
  for (const std::string& name : kPresets) {
    SCOPED_TRACE(name);
    const RunConfig cfg = load_config(preset_path(name));
    const std::string text = to_toml(cfg);
    EXPECT_EQ(parse_config_toml(text, name + " (written back)"), cfg) << text;
  }
}

TEST(Presets, JsonRoundTrip) {
  for (const std::string& name : kPresets) {
    SCOPED_TRACE(name);
    const RunConfig cfg = load_config(preset_path(name));
    EXPECT_EQ(run_config_from_json(to_json(cfg)), cfg);
    EXPECT_EQ(run_config_from_json(nlohmann::json::parse(to_json(cfg).dump())), cfg);
  }
}

TEST(Presets, WhatTheBriefAsks) {
  const RunConfig tiny = load_config(preset_path("tiny"));
  EXPECT_EQ(tiny.model.attention, AttentionKind::MLA);
  EXPECT_EQ(tiny.model.ffn, FfnKind::MoE);
  EXPECT_EQ(tiny.model.num_hidden_layers, 2);
  EXPECT_EQ(tiny.model.num_nextn_predict_layers, 1);
  const RunConfig v2 = load_config(preset_path("v2lite_mini"));
  EXPECT_EQ(v2.model.hidden_size, 2048);
  EXPECT_EQ(v2.model.kv_lora_rank, 512);
  EXPECT_EQ(v2.model.moe_intermediate_size, 1408);
  EXPECT_EQ(v2.model.intermediate_size, 10944);
  EXPECT_EQ(v2.model.vocab_size, 102400);
  EXPECT_EQ(v2.model.scoring_func, ScoreFunc::Softmax);
  EXPECT_EQ(v2.model.num_hidden_layers, 4);
  EXPECT_EQ(v2.train.seq_len, 2048);
  const RunConfig dense = load_config(preset_path("shakespeare_dense"));
  EXPECT_EQ(dense.model.attention, AttentionKind::MHA);
  EXPECT_EQ(dense.model.ffn, FfnKind::Dense);
}

// ---- TOML ----

TEST(ConfigToml, KeysNotWrittenKeepTheirDefaults) {
  const RunConfig cfg = parse_config_toml("[model]\nhidden_size = 96\n", "x.toml");
  RunConfig expected;
  expected.model.hidden_size = 96;
  EXPECT_EQ(cfg, expected);
  EXPECT_EQ(parse_config_toml("# nothing\n", "x.toml"), RunConfig{});
}

TEST(ConfigToml, ValuesQuotesAndComments) {
  const RunConfig cfg = parse_config_toml(
      "# a comment\n"
      "[model]   # a comment after a section header\n"
      "attention = \"gqa\"   # a trailing comment\n"
      "ffn = 'dense'\n"
      "num_key_value_heads = 2\n"
      "vocab_size = 50_304\n"
      "rms_norm_eps = 1e-5\n"
      "tie_word_embeddings = true\n"
      "\n"
      "[train]\n"
      "batch_size = 3\n",
      "x.toml");
  EXPECT_EQ(cfg.model.attention, AttentionKind::GQA);
  EXPECT_EQ(cfg.model.ffn, FfnKind::Dense);
  EXPECT_EQ(cfg.model.num_key_value_heads, 2);
  EXPECT_EQ(cfg.model.vocab_size, 50304);
  EXPECT_EQ(cfg.model.rms_norm_eps, 1e-5);
  EXPECT_TRUE(cfg.model.tie_word_embeddings);
  EXPECT_EQ(cfg.train.batch_size, 3);
}

TEST(ConfigToml, UnknownKeySuggestsTheClosest) {
  EXPECT_EQ(config_error([] { parse_config_toml("[model]\nhiden_size = 64\n", "examples/x.toml"); }),
            "examples/x.toml: [model] unknown key 'hiden_size' (did you mean 'hidden_size'?)");
  EXPECT_EQ(config_error([] { parse_config_toml("[train]\nbatchsize = 4\n", "x.toml"); }),
            "x.toml: [train] unknown key 'batchsize' (did you mean 'batch_size'?)");
  EXPECT_EQ(config_error([] { parse_config_toml("[model]\nwhatever = 4\n", "x.toml"); }),
            "x.toml: [model] unknown key 'whatever'");
  // A train key in [model] is unknown there.
  EXPECT_EQ(config_error([] { parse_config_toml("[model]\nseq_len = 4\n", "x.toml"); }),
            "x.toml: [model] unknown key 'seq_len'");
}

TEST(ConfigToml, UnknownSection) {
  EXPECT_EQ(config_error([] { parse_config_toml("[modle]\nhidden_size = 64\n", "examples/x.toml"); }),
            "examples/x.toml: unknown section [modle] (did you mean [model]?); the sections are [model], [train] and [dist]");
  // Even an empty one, and a nested one.
  EXPECT_EQ(config_error([] { parse_config_toml("[optim]\n", "x.toml"); }),
            "x.toml: unknown section [optim]; the sections are [model], [train] and [dist]");
  const std::string nested = config_error([] { parse_config_toml("[model]\n[model.moe]\nn_group = 2\n", "x.toml"); });
  EXPECT_NE(nested.find("x.toml: unknown section [model.moe]"), std::string::npos) << nested;
}

TEST(ConfigToml, KeyOutsideASection) {
  EXPECT_EQ(config_error([] { parse_config_toml("hidden_size = 64\n", "x.toml"); }),
            "x.toml: key 'hidden_size' is outside a section; put it under [model]");
  EXPECT_EQ(config_error([] { parse_config_toml("seq_len = 64\n", "x.toml"); }),
            "x.toml: key 'seq_len' is outside a section; put it under [train]");
  // A dotted key names its section.
  EXPECT_EQ(parse_config_toml("model.hidden_size = 48\n", "x.toml").model.hidden_size, 48);
}

TEST(ConfigToml, BadValuesNameFileKeyValueAndRule) {
  EXPECT_EQ(config_error([] { parse_config_toml("[model]\nnum_attention_heads = abc\n", "x.toml"); }),
            "x.toml: [model] num_attention_heads = 'abc' is not an integer");
  EXPECT_EQ(config_error([] { parse_config_toml("[model]\nhidden_size = 64.5\n", "x.toml"); }),
            "x.toml: [model] hidden_size = '64.5' is not an integer");
  EXPECT_EQ(config_error([] { parse_config_toml("[model]\nrope_theta = fast\n", "x.toml"); }),
            "x.toml: [model] rope_theta = 'fast' is not a number");
  EXPECT_EQ(config_error([] { parse_config_toml("[model]\nnorm_topk_prob = 1\n", "x.toml"); }),
            "x.toml: [model] norm_topk_prob = '1' is not a bool (true or false)");
  EXPECT_EQ(config_error([] { parse_config_toml("[model]\nattention = \"MHA\"\n", "x.toml"); }),
            "x.toml: [model] attention = 'MHA' is not one of mla, mha, gqa");
  EXPECT_EQ(config_error([] { parse_config_toml("[train]\nseq_len = [1, 2]\n", "x.toml"); }),
            "x.toml: [train] seq_len = [1, 2] must be a single value, not a list (or is the key written twice?)");
  const std::string twice = config_error(
      [] { parse_config_toml("[model]\nhidden_size = 64\nvocab_size = 9\nhidden_size = 32\n", "x.toml"); });
  EXPECT_EQ(twice, "x.toml: [model] hidden_size is set twice");
}

// Found by fuzzing (tests/fuzz/fuzz_config.cpp, corpus/config/crash_control_char_in_string): a path
// with a control character was accepted, and the TOML written back did not read back the same.
TEST(ConfigToml, StringsWithControlCharactersOrNotUtf8AreRefused) {
  EXPECT_EQ(config_error([] { parse_config_toml("[train]\ndata_dir = \"runs/s\x07" "ake\"\n", "x.toml"); }),
            "x.toml: [train] data_dir = \"runs/s\\x07ake\" contains a control character (config strings are paths "
            "and names)");
  RunConfig c;
  testing::expect_error([&] { apply_override(c, "train.out_dir=runs/a\tb"); }, "\"runs/a\\x09b\" contains a control");
  nlohmann::json j = to_json(c);
  j["train"]["data_dir"] = "a\nb";
  testing::expect_error([&] { run_config_from_json(j); }, "\"a\\x0ab\" contains a control character");
  // Found by fuzzing too (corpus/config/crash_invalid_utf8): bytes that are not UTF-8 made the
  // message itself throw, and a checkpoint could not have stored the config as JSON.
  testing::expect_error([&] { apply_override(c, "train.data_dir=runs/\xe9t\xe9"); },
                        "data_dir = \"runs/\\xe9t\\xe9\" is not valid UTF-8");
  // And (corpus/config/crash_quote_after_string) `data_dir = "runs/a"c` read as the string `"runs/a"c`.
  EXPECT_EQ(config_error([] { parse_config_toml("[train]\ndata_dir = \"runs/a\"c\n", "x.toml"); }),
            "x.toml: [train] data_dir = \"\"runs/a\"c\" contains a quote or a backslash (config strings are paths and "
            "names)");
  testing::expect_error([&] { apply_override(c, "train.out_dir=C:\\runs"); }, "contains a quote or a backslash");
  apply_override(c, "train.data_dir=runs/\xc3\xa9t\xc3\xa9");  // UTF-8 is fine
  EXPECT_EQ(c.train.data_dir, "runs/\xc3\xa9t\xc3\xa9");
}

TEST(ConfigToml, ValidationErrorsNameTheFile) {
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/moelab_bad_heads.toml";
  {
    std::ofstream f(path);
    f << "[model]\nattention = \"mha\"\nhidden_size = 64\nnum_attention_heads = 6\n";
  }
  EXPECT_EQ(config_error([&] { load_config(path); }),
            path +
                ": num_attention_heads = 6 does not divide hidden_size = 64 (mha needs hidden_size % "
                "num_attention_heads == 0)");
  // read_config_file does not validate; load_config with a fixing override passes.
  EXPECT_NO_THROW(read_config_file(path));
  EXPECT_EQ(load_config(path, {"model.num_attention_heads=4"}).model.num_attention_heads, 4);
  EXPECT_EQ(config_error([&] { load_config(path, {"model.num_attention_heads=3"}); }),
            path +
                " (after --set): num_attention_heads = 3 does not divide hidden_size = 64 (mha needs hidden_size % "
                "num_attention_heads == 0)");
  std::filesystem::remove(path);
  EXPECT_EQ(config_error([&] { load_config(dir + "/no_such_config.toml"); }),
            dir + "/no_such_config.toml: cannot open the config file");
}

TEST(ConfigToml, TrainRules) {
  EXPECT_EQ(config_error([] { parse_config_toml("[train]\nbatch_size = 0\n", "x.toml").validate(); }),
            "config: batch_size = 0 must be > 0");
  EXPECT_EQ(config_error([] {
              parse_config_toml("[model]\nmax_position_embeddings = 64\n[train]\nseq_len = 65\n", "x.toml").validate();
            }),
            "config: seq_len = 65 exceeds max_position_embeddings = 64 (raise model.max_position_embeddings)");
  EXPECT_EQ(config_error([] { parse_config_toml("[train]\ndevice = \"gpu\"\n", "x.toml").validate(); }),
            "config: device = 'gpu' is not one of cpu, cuda");
  EXPECT_EQ(config_error([] { parse_config_toml("[train]\nprecision = \"fp16\"\n", "x.toml").validate(); }),
            "config: precision = 'fp16' is not one of auto, fp32, bf16, fp8, fp8_pow2");
  EXPECT_NO_THROW(parse_config_toml("[train]\nprecision = \"bf16\"\n", "x.toml").validate());  // CPU bf16
}

TEST(ConfigToml, DistSectionAndRules) {
  const RunConfig cfg = parse_config_toml("[dist]\nzero = 1\nlink = \"pcie4\"\nbucket_mb = 2.5\n", "x.toml");
  cfg.validate();
  EXPECT_EQ(cfg.dist.zero, 1);
  EXPECT_EQ(cfg.dist.link, "pcie4");
  EXPECT_EQ(cfg.dist.bucket_mb, 2.5);
  EXPECT_EQ(parse_config_toml(to_toml(cfg), "round.toml"), cfg) << "the [dist] section round-trips";
  EXPECT_EQ(config_error([] { parse_config_toml("[dist]\nzero = 2\n", "x.toml").validate(); }),
            "config: [dist] zero = 2 is not 0 or 1");
  EXPECT_EQ(config_error([] { parse_config_toml("[dist]\nlink = \"pcie9\"\n", "x.toml").validate(); }),
            "config: [dist] link = 'pcie9' is not one of none, pcie4, pcie5, nvlink4, ib200, ib400");
  EXPECT_EQ(config_error([] { parse_config_toml("[dist]\nbackend = \"gloo\"\n", "x.toml").validate(); }),
            "config: [dist] backend = 'gloo' is not one of auto, mpi, nccl");
  EXPECT_EQ(config_error([] { parse_config_toml("[dist]\ntimeout_s = 0\n", "x.toml").validate(); }),
            "config: [dist] timeout_s = 0.0 must be > 0");
  EXPECT_EQ(config_error([] { parse_config_toml("[dist]\nzeroo = 1\n", "x.toml"); }),
            "x.toml: [dist] unknown key 'zeroo' (did you mean 'zero'?)");
  // A checkpoint's config from before the section reads as the defaults.
  RunConfig old;
  nlohmann::json j = to_json(old);
  j.erase("dist");
  EXPECT_EQ(run_config_from_json(j), old);
}

// ---- --set ----

TEST(ConfigOverride, SectionQualifiedAndBareKeys) {
  RunConfig cfg = load_config(preset_path("tiny"));
  apply_override(cfg, "model.hidden_size=48");
  apply_override(cfg, "train.batch_size=3");
  apply_override(cfg, "seq_len=8");      // bare: names one train key
  apply_override(cfg, "attention=mha");  // bare: names one model key
  apply_override(cfg, "model.rope_theta=5e5");
  EXPECT_EQ(cfg.model.hidden_size, 48);
  EXPECT_EQ(cfg.train.batch_size, 3);
  EXPECT_EQ(cfg.train.seq_len, 8);
  EXPECT_EQ(cfg.model.attention, AttentionKind::MHA);
  EXPECT_EQ(cfg.model.rope_theta, 5e5);
  EXPECT_NO_THROW(cfg.validate());
}

TEST(ConfigOverride, AppliedAfterTheFileInOrder) {
  const RunConfig cfg = load_config(preset_path("tiny"), {"model.hidden_size=40", "model.hidden_size=36"});
  EXPECT_EQ(cfg.model.hidden_size, 36);
  RunConfig expected = load_config(preset_path("tiny"));
  expected.model.hidden_size = 36;
  EXPECT_EQ(cfg, expected);
}

TEST(ConfigOverride, Errors) {
  RunConfig cfg;
  EXPECT_EQ(config_error([&] { apply_override(cfg, "model.hiden_size=3"); }),
            "--set 'model.hiden_size=3': [model] unknown key 'hiden_size' (did you mean 'hidden_size'?)");
  EXPECT_EQ(config_error([&] { apply_override(cfg, "hiden_size=3"); }),
            "--set 'hiden_size=3': unknown key 'hiden_size' (did you mean 'hidden_size'?)");
  EXPECT_EQ(config_error([&] { apply_override(cfg, "trian.seq_len=3"); }),
            "--set 'trian.seq_len=3': unknown section [trian] (did you mean [train]?); the sections are [model], "
            "[train] and [dist]");
  EXPECT_EQ(config_error([&] { apply_override(cfg, "train.seq_len=long"); }),
            "--set 'train.seq_len=long': [train] seq_len = 'long' is not an integer");
  EXPECT_EQ(config_error([&] { apply_override(cfg, "model.hidden_size"); }),
            "--set 'model.hidden_size': expected key=value, e.g. model.hidden_size=256 or train.batch_size=4");
  EXPECT_EQ(config_error([&] { apply_override(cfg, "=3"); }),
            "--set '=3': expected key=value, e.g. model.hidden_size=256 or train.batch_size=4");
  EXPECT_EQ(cfg, RunConfig{});  // nothing was changed by the failed ones
}

// ---- JSON of the whole run config ----

TEST(ConfigJson, RunConfigSectionsAndErrors) {
  RunConfig cfg;
  cfg.model.hidden_size = 80;
  cfg.train.seq_len = 32;
  const nlohmann::json j = to_json(cfg);
  EXPECT_EQ(j.at("model").at("hidden_size"), 80);
  EXPECT_EQ(j.at("train").at("seq_len"), 32);
  EXPECT_EQ(run_config_from_json(j), cfg);
  EXPECT_EQ(config_error([] {
              run_config_from_json({{"modle", nlohmann::json::object()}});
            }),
            "config: unknown section [modle] (did you mean [model]?); the sections are [model], [train] and [dist]");
  EXPECT_EQ(config_error([] {
              run_config_from_json({{"train", {{"seq_len", "8"}}}});
            }),
            "config: [train] seq_len = \"8\" is not an integer");
  EXPECT_EQ(config_error([] {
              run_config_from_json({{"model", {{"hiden_size", 8}}}});
            }),
            "config: [model] unknown key 'hiden_size' (did you mean 'hidden_size'?)");
}

TEST(ConfigTable, TrainKeys) {
  EXPECT_TRUE(has_train_key("batch_size"));
  EXPECT_TRUE(has_train_key("seq_len"));
  EXPECT_FALSE(has_train_key("threads"));  // a command-line option, not a config key
  for (const TrainConfigField& f : train_config_fields()) {
    EXPECT_FALSE(has_config_key(f.name)) << f.name << " is a key of both sections";
    EXPECT_TRUE(f.type() == "integer" || f.type() == "number" || f.type() == "string") << f.name << ": " << f.type();
  }
  EXPECT_EQ(train_config_fields()[0].type(), "integer");  // batch_size
  const RunConfig defaults;
  EXPECT_EQ(get_run_key(defaults, "train", "batch_size"), "8");
  EXPECT_EQ(get_run_key(defaults, "model", "attention"), "mla");
}

}  // namespace
}  // namespace moelab
