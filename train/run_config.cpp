// RunConfig: the [train] field table, section dispatch, `--set` overrides, TOML and JSON writers.
// See run_config.h.
#include "train/run_config.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>

namespace moelab {

namespace {

using TrainField = TrainConfigField;

const std::vector<TrainField> kTrainFields = {
    {"batch_size", "B, sequences per micro-step (per process)", &TrainConfig::batch_size},
    {"seq_len", "T, tokens per sequence (<= model.max_position_embeddings)", &TrainConfig::seq_len},
    {"steps", "optimizer steps", &TrainConfig::steps},
    {"grad_accum_steps", "micro-batches per optimizer step", &TrainConfig::grad_accum_steps},
    {"lr", "peak learning rate", &TrainConfig::lr},
    {"min_lr_ratio", "the schedule ends at lr * min_lr_ratio", &TrainConfig::min_lr_ratio},
    {"warmup_steps", "linear warm-up steps", &TrainConfig::warmup_steps},
    {"schedule", "cosine or wsd (warmup-stable-decay)", &TrainConfig::schedule},
    {"decay_fraction", "wsd: the final fraction of steps that decays", &TrainConfig::decay_fraction},
    {"weight_decay", "AdamW decoupled weight decay (not on norms, embeddings, biases)", &TrainConfig::weight_decay},
    {"beta1", "AdamW beta1", &TrainConfig::beta1},
    {"beta2", "AdamW beta2", &TrainConfig::beta2},
    {"adam_eps", "AdamW epsilon", &TrainConfig::adam_eps},
    {"grad_clip", "global gradient-norm clipping; 0 = off", &TrainConfig::grad_clip},
    {"max_nonfinite", "stop after this many non-finite steps in a row", &TrainConfig::max_nonfinite},
    {"seed", "initialisation and data seed", &TrainConfig::seed},
    {"device", "cpu or cuda", &TrainConfig::device},
    {"precision", "auto (cpu: fp32, cuda: bf16), fp32, or bf16 (bf16 compute, f32 master weights; cuda only)",
     &TrainConfig::precision},
    {"data_dir", "a `moelab prepare` output directory", &TrainConfig::data_dir},
    {"data_mode", "random (windows) or sequential (shuffled epochs)", &TrainConfig::data_mode},
    {"eval_every", "steps between validation passes; 0 = only at the end", &TrainConfig::eval_every},
    {"eval_batches", "validation batches per pass", &TrainConfig::eval_batches},
    {"log_every", "steps between console lines and metrics records", &TrainConfig::log_every},
    {"out_dir", "run directory: checkpoints and metrics.jsonl", &TrainConfig::out_dir},
    {"ckpt_every", "steps between checkpoints; 0 = only at the end", &TrainConfig::ckpt_every},
    {"keep_last", "complete checkpoints kept; 0 = all", &TrainConfig::keep_last},
    {"time_limit_s", "stop (evaluate, save) after this many seconds of training; 0 = none", &TrainConfig::time_limit_s},
};

// Per-type codecs (the ModelConfig table has its own for its enums; these cover the scalars).
void parse_into(const std::string& key, const std::string& v, int64_t& out) { out = parse_config_int(key, v); }
void parse_into(const std::string& key, const std::string& v, double& out) { out = parse_config_number(key, v); }
void parse_into(const std::string& key, const std::string& v, bool& out) { out = parse_config_bool(key, v); }
void parse_into(const std::string& key, const std::string& v, uint64_t& out) {
  const int64_t x = parse_config_int(key, v);
  if (x < 0) throw ConfigError(key + " = " + v + " must be >= 0");
  out = static_cast<uint64_t>(x);
}
void parse_into(const std::string&, const std::string& v, std::string& out) { out = v; }

// TOML text of a value: numbers and bools bare, enum names quoted.
std::string toml_value(int64_t v) { return std::to_string(v); }
std::string toml_value(double v) { return format_config_number(v); }
std::string toml_value(bool v) { return v ? "true" : "false"; }
std::string toml_value(uint64_t v) { return std::to_string(v); }
std::string toml_value(const std::string& v) { return nlohmann::json(v).dump(); }
std::string toml_value(AttentionKind v) { return std::string("\"") + attention_kind_name(v) + "\""; }
std::string toml_value(FfnKind v) { return std::string("\"") + ffn_kind_name(v) + "\""; }
std::string toml_value(ScoreFunc v) { return std::string("\"") + score_func_name(v) + "\""; }

const char* type_name(int64_t) { return "integer"; }
const char* type_name(double) { return "number"; }
const char* type_name(bool) { return "bool"; }
const char* type_name(uint64_t) { return "integer"; }
const char* type_name(const std::string&) { return "string"; }

std::vector<std::string> train_names() {
  std::vector<std::string> names;
  for (const TrainField& f : kTrainFields) names.emplace_back(f.name);
  return names;
}

const TrainField* find_train_field(const std::string& key) {
  for (const TrainField& f : kTrainFields)
    if (key == f.name) return &f;
  return nullptr;
}

const TrainField& train_field_or_throw(const std::string& key) {
  if (const TrainField* f = find_train_field(key)) return *f;
  throw ConfigError("unknown key '" + key + "'" + did_you_mean(key, train_names()));
}

std::string json_text(const nlohmann::json& j) { return j.dump(); }

// JSON -> field, with the JSON type checked (a quoted number or 0/1 for a bool is an error).
void from_json_into(const std::string& key, const nlohmann::json& j, int64_t& out) {
  if (!j.is_number_integer()) throw ConfigError(key + " = " + json_text(j) + " is not an integer");
  out = parse_config_int(key, j.dump());  // range-checked
}
void from_json_into(const std::string& key, const nlohmann::json& j, double& out) {
  if (!j.is_number()) throw ConfigError(key + " = " + json_text(j) + " is not a number");
  out = j.get<double>();
}
void from_json_into(const std::string& key, const nlohmann::json& j, uint64_t& out) {
  if (!j.is_number_unsigned()) throw ConfigError(key + " = " + json_text(j) + " is not an integer >= 0");
  out = j.get<uint64_t>();
}
void from_json_into(const std::string& key, const nlohmann::json& j, std::string& out) {
  if (!j.is_string()) throw ConfigError(key + " = " + json_text(j) + " is not a string");
  out = j.get<std::string>();
}
void from_json_into(const std::string& key, const nlohmann::json& j, bool& out) {
  if (!j.is_boolean()) throw ConfigError(key + " = " + json_text(j) + " is not a bool (true or false)");
  out = j.get<bool>();
}

// Runs f(); a ConfigError from it comes back with "[section] " before its reason.
template <typename F>
auto in_section(const std::string& section, F&& f) {
  try {
    return f();
  } catch (const ConfigError& e) {
    throw ConfigError("[" + section + "] " + e.reason());
  }
}

}  // namespace

// ---- TrainConfig ----

void TrainConfig::validate(const ModelConfig& model) const {
  auto positive = [](const char* key, int64_t v) {
    if (v <= 0) throw ConfigError(std::string(key) + " = " + std::to_string(v) + " must be > 0");
  };
  auto non_negative = [](const char* key, double v) {
    if (!(v >= 0) || !std::isfinite(v)) throw ConfigError(std::string(key) + " = " + format_config_number(v) + " must be >= 0");
  };
  positive("steps", steps);
  positive("grad_accum_steps", grad_accum_steps);
  positive("eval_batches", eval_batches);
  positive("log_every", log_every);
  positive("max_nonfinite", max_nonfinite);
  for (auto [key, v] : {std::pair<const char*, int64_t>{"warmup_steps", warmup_steps}, {"eval_every", eval_every},
                        {"ckpt_every", ckpt_every}, {"keep_last", keep_last}})
    non_negative(key, static_cast<double>(v));
  if (!(lr > 0) || !std::isfinite(lr)) throw ConfigError("lr = " + format_config_number(lr) + " must be > 0");
  if (!(min_lr_ratio >= 0 && min_lr_ratio <= 1))
    throw ConfigError("min_lr_ratio = " + format_config_number(min_lr_ratio) + " must be in [0, 1]");
  if (schedule != "cosine" && schedule != "wsd")
    throw ConfigError("schedule = '" + schedule + "' is not one of cosine, wsd");
  if (!(decay_fraction > 0 && decay_fraction <= 1))
    throw ConfigError("decay_fraction = " + format_config_number(decay_fraction) + " must be in (0, 1]");
  for (auto [key, v] : {std::pair<const char*, double>{"weight_decay", weight_decay}, {"adam_eps", adam_eps},
                        {"grad_clip", grad_clip}, {"time_limit_s", time_limit_s}})
    non_negative(key, v);
  for (auto [key, v] : {std::pair<const char*, double>{"beta1", beta1}, {"beta2", beta2}})
    if (!(v >= 0 && v < 1)) throw ConfigError(std::string(key) + " = " + format_config_number(v) + " must be in [0, 1)");
  if (device != "cpu" && device != "cuda") throw ConfigError("device = '" + device + "' is not one of cpu, cuda");
  if (precision != "auto" && precision != "fp32" && precision != "bf16")
    throw ConfigError("precision = '" + precision + "' is not one of auto, fp32, bf16");
  if (device == "cpu" && precision == "bf16")
    throw ConfigError("precision = 'bf16' runs on CUDA only (device = 'cpu' trains in fp32)");
  if (data_mode != "random" && data_mode != "sequential")
    throw ConfigError("data_mode = '" + data_mode + "' is not one of random, sequential");
  if (out_dir.empty()) throw ConfigError("out_dir is empty: checkpoints and metrics need a directory");
  if (batch_size <= 0) throw ConfigError("batch_size = " + std::to_string(batch_size) + " must be > 0");
  if (seq_len <= 0) throw ConfigError("seq_len = " + std::to_string(seq_len) + " must be > 0");
  if (seq_len > model.max_position_embeddings)
    throw ConfigError("seq_len = " + std::to_string(seq_len) + " exceeds max_position_embeddings = " +
                      std::to_string(model.max_position_embeddings) + " (raise model.max_position_embeddings)");
}

std::string TrainConfigField::type() const {
  return std::visit([](auto m) { return std::string(type_name(TrainConfig{}.*m)); }, member);
}

const std::vector<TrainConfigField>& train_config_fields() { return kTrainFields; }
bool has_train_key(const std::string& key) { return find_train_field(key) != nullptr; }

void set_train_key(TrainConfig& cfg, const std::string& key, const std::string& value) {
  std::visit([&](auto m) { parse_into(key, value, cfg.*m); }, train_field_or_throw(key).member);
}

std::string get_train_key(const TrainConfig& cfg, const std::string& key) {
  return std::visit([&](auto m) { return toml_value(cfg.*m); }, train_field_or_throw(key).member);
}

nlohmann::json to_json(const TrainConfig& cfg) {
  nlohmann::json j = nlohmann::json::object();
  for (const TrainField& f : kTrainFields) std::visit([&](auto m) { j[f.name] = cfg.*m; }, f.member);
  return j;
}

TrainConfig train_config_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw ConfigError("expected a JSON object of train keys, got " + json_text(j));
  TrainConfig cfg;
  for (const auto& [key, value] : j.items())
    std::visit([&, &key = key, &value = value](auto m) { from_json_into(key, value, cfg.*m); },
               train_field_or_throw(key).member);
  return cfg;
}

bool operator==(const TrainConfig& a, const TrainConfig& b) {
  for (const TrainField& f : kTrainFields)
    if (!std::visit([&](auto m) { return a.*m == b.*m; }, f.member)) return false;
  return true;
}

// ---- RunConfig ----

void RunConfig::validate() const {
  model.validate();
  train.validate(model);
}

const std::vector<std::string>& config_sections() {
  static const std::vector<std::string> sections = {"model", "train"};
  return sections;
}

void check_config_section(const std::string& section) {
  for (const std::string& s : config_sections())
    if (s == section) return;
  throw ConfigError("unknown section [" + section + "]" + did_you_mean(section, config_sections(), "[", "]") +
                    "; the sections are [model] and [train]");
}

void set_run_key(RunConfig& cfg, const std::string& section, const std::string& key, const std::string& value) {
  check_config_section(section);
  in_section(section, [&] {
    if (section == "model") set_config_key(cfg.model, key, value);
    else set_train_key(cfg.train, key, value);
  });
}

std::string get_run_key(const RunConfig& cfg, const std::string& section, const std::string& key) {
  check_config_section(section);
  return in_section(
      section, [&] { return section == "model" ? get_config_key(cfg.model, key) : get_train_key(cfg.train, key); });
}

void apply_override(RunConfig& cfg, const std::string& assignment) {
  const std::string where = "--set '" + assignment + "'";
  try {
    const size_t eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0)
      throw ConfigError("expected key=value, e.g. model.hidden_size=256 or train.batch_size=4");
    const std::string path = assignment.substr(0, eq), value = assignment.substr(eq + 1);
    const size_t dot = path.find('.');
    if (dot != std::string::npos) {
      set_run_key(cfg, path.substr(0, dot), path.substr(dot + 1), value);
    } else if (has_config_key(path)) {
      set_run_key(cfg, "model", path, value);
    } else if (has_train_key(path)) {
      set_run_key(cfg, "train", path, value);
    } else {
      std::vector<std::string> all;
      for (const auto& f : model_config_fields()) all.emplace_back(f.name);
      for (const auto& f : train_config_fields()) all.emplace_back(f.name);
      throw ConfigError("unknown key '" + path + "'" + did_you_mean(path, all));
    }
  } catch (const ConfigError& e) {
    throw ConfigError(e.reason(), where);
  }
}

std::string to_toml(const RunConfig& cfg) {
  std::ostringstream os;
  auto line = [&os](const std::string& key, const std::string& value, const char* help) {
    std::string kv = key + " = " + value;
    if (kv.size() < 40) kv.resize(40, ' ');
    os << kv << "  # " << help << "\n";
  };
  os << "[model]\n";
  for (const ModelConfigField& f : model_config_fields())
    line(f.name, std::visit([&](auto m) { return toml_value(cfg.model.*m); }, f.member), f.help);
  os << "\n[train]\n";
  for (const TrainField& f : kTrainFields)
    line(f.name, std::visit([&](auto m) { return toml_value(cfg.train.*m); }, f.member), f.help);
  return os.str();
}

nlohmann::json to_json(const RunConfig& cfg) { return {{"model", to_json(cfg.model)}, {"train", to_json(cfg.train)}}; }

RunConfig run_config_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw ConfigError("expected a JSON object with \"model\" and \"train\", got " + json_text(j));
  RunConfig cfg;
  for (const auto& [section, value] : j.items()) {
    check_config_section(section);
    in_section(section, [&, &section = section, &value = value] {
      if (section == "model") cfg.model = model_config_from_json(value);
      else cfg.train = train_config_from_json(value);
    });
  }
  return cfg;
}

bool operator==(const RunConfig& a, const RunConfig& b) { return a.model == b.model && a.train == b.train; }

}  // namespace moelab
