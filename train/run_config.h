// What one run is configured with: the model (core/nn/config.h) and the training keys, as a TOML
// file holds them (examples/*.toml):
//
//   [model]                 # every ModelConfig key, e.g.
//   hidden_size = 128
//   attention = "mla"
//   [train]                 # TrainConfig keys
//   batch_size = 16
//   seq_len = 256
//
// Keys not written keep their defaults. Command-line overrides are `--set key=value`, where key
// is `model.<key>`, `train.<key>` or a bare key that names one field of either; they apply after
// the file, then the whole config is validated. Reading TOML files is train/config_file.h.
// Errors are ConfigError (core/nn/config.h) naming the section, the key, the value and the rule.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <variant>
#include <vector>

#include "core/nn/config.h"

namespace moelab {

// The [train] section. Grows with the trainer: add the field here and one line to the table in
// run_config.cpp.
struct TrainConfig {
  int64_t batch_size = 8;  // B, sequences per step (per process)
  int64_t seq_len = 128;   // T, tokens per sequence

  void validate(const ModelConfig& model) const;  // also: seq_len <= model.max_position_embeddings
};

struct TrainConfigField {
  using Member = std::variant<int64_t TrainConfig::*, double TrainConfig::*, bool TrainConfig::*>;
  const char* name;
  const char* help;
  Member member;

  std::string type() const;
};
const std::vector<TrainConfigField>& train_config_fields();

void set_train_key(TrainConfig& cfg, const std::string& key, const std::string& value);
std::string get_train_key(const TrainConfig& cfg, const std::string& key);
bool has_train_key(const std::string& key);
nlohmann::json to_json(const TrainConfig& cfg);
TrainConfig train_config_from_json(const nlohmann::json& j);
bool operator==(const TrainConfig& a, const TrainConfig& b);
inline bool operator!=(const TrainConfig& a, const TrainConfig& b) { return !(a == b); }

struct RunConfig {
  ModelConfig model;
  TrainConfig train;

  void validate() const;  // model, then train (against the model)
};

// The sections of a config file, in order: "model", "train". check_config_section throws
// "unknown section [modle] (did you mean [model]?); the sections are [model] and [train]".
const std::vector<std::string>& config_sections();
void check_config_section(const std::string& section);

// Sets `key` of `section`; errors name both: "[model] unknown key 'hiden_size' (did you mean
// 'hidden_size'?)", "[model] num_attention_heads = 'abc' is not an integer",
// "unknown section [modle] (did you mean [model]?)".
void set_run_key(RunConfig& cfg, const std::string& section, const std::string& key, const std::string& value);
std::string get_run_key(const RunConfig& cfg, const std::string& section, const std::string& key);

// One `--set` assignment: "model.hidden_size=256", "train.batch_size=4" or "hidden_size=256".
// Errors start with "--set 'assignment': ". Does not validate().
void apply_override(RunConfig& cfg, const std::string& assignment);

// The whole config as a TOML file (every key, both sections) that reads back to the same config,
// and as JSON {"model": {...}, "train": {...}}.
std::string to_toml(const RunConfig& cfg);
nlohmann::json to_json(const RunConfig& cfg);
RunConfig run_config_from_json(const nlohmann::json& j);  // does not validate()
bool operator==(const RunConfig& a, const RunConfig& b);
inline bool operator!=(const RunConfig& a, const RunConfig& b) { return !(a == b); }

}  // namespace moelab
