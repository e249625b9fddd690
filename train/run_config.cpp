// RunConfig: the [train] and [dist] field tables, section dispatch, `--set` overrides, TOML and JSON
// writers.
// See run_config.h.
#include "train/run_config.h"

#include "dist/comm.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

namespace moelab {

namespace {

using TrainField = TrainConfigField;

const std::vector<TrainField> kTrainFields = {
    {"batch_size", "B, sequences per micro-step, all processes together", &TrainConfig::batch_size},
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
    {"precision", "auto (cpu: fp32, cuda: bf16), fp32, bf16 (bf16 compute, f32 master weights; cuda only), fp8 "
                  "or fp8_pow2 (the Linear GEMMs in e4m3 with fine-grained scales, power-of-two for fp8_pow2; "
                  "emulated exactly on the cpu)",
     &TrainConfig::precision},
    {"data_dir", "a `moelab prepare` output directory", &TrainConfig::data_dir},
    {"data_mode", "random (windows) or sequential (shuffled epochs)", &TrainConfig::data_mode},
    {"eval_every", "steps between validation passes; 0 = only at the end", &TrainConfig::eval_every},
    {"eval_batches", "validation batches per pass; 0 = the whole val split", &TrainConfig::eval_batches},
    {"log_every", "steps between console lines and metrics records", &TrainConfig::log_every},
    {"out_dir", "run directory: checkpoints and metrics.jsonl", &TrainConfig::out_dir},
    {"ckpt_every", "steps between checkpoints; 0 = only at the end", &TrainConfig::ckpt_every},
    {"keep_last", "complete checkpoints kept; 0 = all", &TrainConfig::keep_last},
    {"time_limit_s", "stop (evaluate, save) after this many seconds of training; 0 = none", &TrainConfig::time_limit_s},
    {"hardware", "a hardware file (examples/hardware/*.toml) whose peak is MFU's denominator; \"\" = none",
     &TrainConfig::hardware},
    {"peak_tflops", "MFU's denominator per process in TFLOP/s (overrides hardware); 0 = from hardware",
     &TrainConfig::peak_tflops},
};

const std::vector<DistConfigField> kDistFields = {
    {"backend", "auto (nccl for cuda when built with it, else mpi), mpi or nccl", &DistConfig::backend},
    {"ranks_per_node", "emulated nodes of this many ranks; 0 = one node", &DistConfig::ranks_per_node},
    {"zero", "0: replicated optimizer state; 1: ZeRO-1 (sharded over the ranks)", &DistConfig::zero},
    {"ep", "expert-parallel group size (experts split over ep consecutive ranks); 1 = off", &DistConfig::ep},
    {"bucket_mb", "gradient bucket size (MB) of the overlapped reduction", &DistConfig::bucket_mb},
    {"link", "emulated link preset: none, pcie4, pcie5, nvlink4, ib200, ib400", &DistConfig::link},
    {"intra_gbps", "> 0: emulated intra-node bandwidth (GB/s), overrides the preset", &DistConfig::intra_gbps},
    {"intra_latency_us", "emulated intra-node latency (us) with intra_gbps", &DistConfig::intra_latency_us},
    {"inter_gbps", "> 0: emulated inter-node bandwidth (GB/s), overrides the preset", &DistConfig::inter_gbps},
    {"inter_latency_us", "emulated inter-node latency (us) with inter_gbps", &DistConfig::inter_latency_us},
    {"timeout_s", "seconds before a stuck collective ends the run, naming the silent ranks", &DistConfig::timeout_s},
    {"overlap", "1: expert-parallel all-to-alls of one half of the tokens overlap the other half's experts",
     &DistConfig::overlap},
    {"dispatch_dtype", "expert-parallel dispatch on the wire: f32 (as the activations), bf16, fp8 (e4m3, 1x128 scales)",
     &DistConfig::dispatch_dtype},
};

const std::vector<HardwareField> kHardwareFields = {
    {"name", "the machine's display name", &HardwareProfile::name},
    {"peak_bf16_tflops", "dense bf16 matmul peak per device, TFLOP/s", &HardwareProfile::peak_bf16_tflops},
    {"peak_fp8_tflops", "dense fp8 matmul peak per device, TFLOP/s (0: none)", &HardwareProfile::peak_fp8_tflops},
    {"peak_fp32_tflops", "fp32 peak per device, TFLOP/s", &HardwareProfile::peak_fp32_tflops},
    {"memory_gib", "memory per device, GiB", &HardwareProfile::memory_gib},
    {"memory_gbps", "memory bandwidth per device, GB/s", &HardwareProfile::memory_gbps},
    {"gpus_per_node", "devices sharing the intra-node link", &HardwareProfile::gpus_per_node},
    {"intra_gbps", "intra-node bandwidth per device per direction, GB/s", &HardwareProfile::intra_gbps},
    {"intra_latency_us", "intra-node latency per message, us", &HardwareProfile::intra_latency_us},
    {"inter_gbps", "inter-node bandwidth per device per direction, GB/s", &HardwareProfile::inter_gbps},
    {"inter_latency_us", "inter-node latency per message, us", &HardwareProfile::inter_latency_us},
    {"compute_efficiency", "fraction of the matmul peak large GEMMs reach", &HardwareProfile::compute_efficiency},
    {"attention_efficiency", "fraction of the matmul peak attention reaches", &HardwareProfile::attention_efficiency},
    {"memory_efficiency", "fraction of memory bandwidth streaming kernels reach", &HardwareProfile::memory_efficiency},
    {"link_efficiency", "fraction of link bandwidth collectives reach", &HardwareProfile::link_efficiency},
};

template <typename S>
const std::vector<ConfigFieldOf<S>>& fields_of();
template <>
const std::vector<HardwareField>& fields_of<HardwareProfile>() { return kHardwareFields; }
template <>
const std::vector<TrainConfigField>& fields_of<TrainConfig>() { return kTrainFields; }
template <>
const std::vector<DistConfigField>& fields_of<DistConfig>() { return kDistFields; }

// Per-type codecs (the ModelConfig table has its own for its enums; these cover the scalars).
void parse_into(const std::string& key, const std::string& v, int64_t& out) { out = parse_config_int(key, v); }
void parse_into(const std::string& key, const std::string& v, double& out) { out = parse_config_number(key, v); }
void parse_into(const std::string& key, const std::string& v, bool& out) { out = parse_config_bool(key, v); }
void parse_into(const std::string& key, const std::string& v, uint64_t& out) {
  const int64_t x = parse_config_int(key, v);
  if (x < 0) throw ConfigError(key + " = " + v + " must be >= 0");
  out = static_cast<uint64_t>(x);
}
// String values are paths and names: a control character (a tab or a BEL pasted into a path), a
// quote, a backslash or bytes that are not UTF-8 are refused rather than carried into a file name,
// and the config must survive as JSON (checkpoints) and as TOML (which would not read those back).
std::string config_string(const std::string& key, const std::string& v) {
  std::string shown;  // the value with every byte outside printable ASCII as \xHH
  bool control = false;
  for (unsigned char c : v) {
    control |= c < 0x20 || c == 0x7f;
    if (c >= 0x20 && c < 0x7f) {
      shown += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      shown += hex;
    }
  }
  if (control) throw ConfigError(key + " = \"" + shown + "\" contains a control character (config strings are paths and names)");
  // A quote or a backslash: most often a TOML line gone wrong (`"a"b` reads as the string `"a"b`),
  // and not one that TOML written back would read back the same.
  if (v.find_first_of("\"\\") != std::string::npos)
    throw ConfigError(key + " = \"" + shown + "\" contains a quote or a backslash (config strings are paths and names)");
  try {
    (void)nlohmann::json(v).dump();
  } catch (const nlohmann::json::exception&) {
    throw ConfigError(key + " = \"" + shown + "\" is not valid UTF-8");
  }
  return v;
}
void parse_into(const std::string& key, const std::string& v, std::string& out) { out = config_string(key, v); }

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

template <typename S>
std::vector<std::string> names_of() {
  std::vector<std::string> names;
  for (const ConfigFieldOf<S>& f : fields_of<S>()) names.emplace_back(f.name);
  return names;
}

template <typename S>
const ConfigFieldOf<S>* find_field(const std::string& key) {
  for (const ConfigFieldOf<S>& f : fields_of<S>())
    if (key == f.name) return &f;
  return nullptr;
}

template <typename S>
const ConfigFieldOf<S>& field_or_throw(const std::string& key) {
  if (const ConfigFieldOf<S>* f = find_field<S>(key)) return *f;
  throw ConfigError("unknown key '" + key + "'" + did_you_mean(key, names_of<S>()));
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
  out = config_string(key, j.get<std::string>());
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
  positive("log_every", log_every);
  positive("max_nonfinite", max_nonfinite);
  for (auto [key, v] : {std::pair<const char*, int64_t>{"warmup_steps", warmup_steps}, {"eval_every", eval_every}, {"eval_batches", eval_batches},
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
                        {"grad_clip", grad_clip}, {"time_limit_s", time_limit_s}, {"peak_tflops", peak_tflops}})
    non_negative(key, v);
  for (auto [key, v] : {std::pair<const char*, double>{"beta1", beta1}, {"beta2", beta2}})
    if (!(v >= 0 && v < 1)) throw ConfigError(std::string(key) + " = " + format_config_number(v) + " must be in [0, 1)");
  if (device != "cpu" && device != "cuda") throw ConfigError("device = '" + device + "' is not one of cpu, cuda");
  if (precision != "auto" && precision != "fp32" && precision != "bf16" && precision != "fp8" && precision != "fp8_pow2")
    throw ConfigError("precision = '" + precision + "' is not one of auto, fp32, bf16, fp8, fp8_pow2");
  if (data_mode != "random" && data_mode != "sequential")
    throw ConfigError("data_mode = '" + data_mode + "' is not one of random, sequential");
  if (out_dir.empty()) throw ConfigError("out_dir is empty: checkpoints and metrics need a directory");
  if (batch_size <= 0) throw ConfigError("batch_size = " + std::to_string(batch_size) + " must be > 0");
  if (seq_len <= 0) throw ConfigError("seq_len = " + std::to_string(seq_len) + " must be > 0");
  if (seq_len > model.max_position_embeddings)
    throw ConfigError("seq_len = " + std::to_string(seq_len) + " exceeds max_position_embeddings = " +
                      std::to_string(model.max_position_embeddings) + " (raise model.max_position_embeddings)");
}

template <typename S>
std::string ConfigFieldOf<S>::type() const {
  return std::visit([](auto m) { return std::string(type_name(S{}.*m)); }, member);
}
template struct ConfigFieldOf<TrainConfig>;
template struct ConfigFieldOf<DistConfig>;
template struct ConfigFieldOf<HardwareProfile>;

namespace {
template <typename S>
void set_key(S& cfg, const std::string& key, const std::string& value) {
  std::visit([&](auto m) { parse_into(key, value, cfg.*m); }, field_or_throw<S>(key).member);
}

template <typename S>
std::string get_key(const S& cfg, const std::string& key) {
  return std::visit([&](auto m) { return toml_value(cfg.*m); }, field_or_throw<S>(key).member);
}

template <typename S>
nlohmann::json fields_to_json(const S& cfg) {
  nlohmann::json j = nlohmann::json::object();
  for (const ConfigFieldOf<S>& f : fields_of<S>()) std::visit([&](auto m) { j[f.name] = cfg.*m; }, f.member);
  return j;
}

template <typename S>
S fields_from_json(const nlohmann::json& j, const char* section) {
  if (!j.is_object()) throw ConfigError(std::string("expected a JSON object of ") + section + " keys, got " + json_text(j));
  S cfg;
  for (const auto& [key, value] : j.items())
    std::visit([&, &key = key, &value = value](auto m) { from_json_into(key, value, cfg.*m); },
               field_or_throw<S>(key).member);
  return cfg;
}

template <typename S>
bool fields_equal(const S& a, const S& b) {
  for (const ConfigFieldOf<S>& f : fields_of<S>())
    if (!std::visit([&](auto m) { return a.*m == b.*m; }, f.member)) return false;
  return true;
}
}  // namespace

const std::vector<TrainConfigField>& train_config_fields() { return kTrainFields; }
bool has_train_key(const std::string& key) { return find_field<TrainConfig>(key) != nullptr; }
void set_train_key(TrainConfig& cfg, const std::string& key, const std::string& value) { set_key(cfg, key, value); }
std::string get_train_key(const TrainConfig& cfg, const std::string& key) { return get_key(cfg, key); }
nlohmann::json to_json(const TrainConfig& cfg) { return fields_to_json(cfg); }
TrainConfig train_config_from_json(const nlohmann::json& j) { return fields_from_json<TrainConfig>(j, "train"); }
bool operator==(const TrainConfig& a, const TrainConfig& b) { return fields_equal(a, b); }

// ---- HardwareProfile ----

const std::vector<HardwareField>& hardware_fields() { return kHardwareFields; }
void set_hardware_key(HardwareProfile& hw, const std::string& key, const std::string& value) { set_key(hw, key, value); }

void HardwareProfile::validate() const {
  for (const HardwareField& f : kHardwareFields)
    if (auto m = std::get_if<double HardwareProfile::*>(&f.member); m && !(std::isfinite(this->**m) && this->**m >= 0))
      throw ConfigError(std::string(f.name) + " = " + format_config_number(this->**m) + " must be a number >= 0");
  if (name.empty()) throw ConfigError("name is empty (expected the machine's display name)");
  for (auto [key, v] : {std::pair<const char*, double>{"memory_gib", memory_gib}, {"memory_gbps", memory_gbps},
                        {"intra_gbps", intra_gbps}, {"inter_gbps", inter_gbps}})
    if (!(v > 0)) throw ConfigError(std::string(key) + " = " + format_config_number(v) + " must be > 0");
  if (!(peak_fp32_tflops > 0 || peak_bf16_tflops > 0))
    throw ConfigError("peak_fp32_tflops and peak_bf16_tflops are both 0 (expected at least one matmul peak > 0)");
  if (gpus_per_node < 1) throw ConfigError("gpus_per_node = " + std::to_string(gpus_per_node) + " must be >= 1");
  for (auto [key, v] : {std::pair<const char*, double>{"compute_efficiency", compute_efficiency},
                        {"attention_efficiency", attention_efficiency}, {"memory_efficiency", memory_efficiency},
                        {"link_efficiency", link_efficiency}})
    if (!(v > 0 && v <= 1)) throw ConfigError(std::string(key) + " = " + format_config_number(v) + " must be in (0, 1]");
}

double HardwareProfile::peak_flops(const std::string& precision) const {
  const std::pair<const char*, double> peak = precision == "fp32"   ? std::pair{"peak_fp32_tflops", peak_fp32_tflops}
                                              : precision == "bf16" ? std::pair{"peak_bf16_tflops", peak_bf16_tflops}
                                              : precision == "fp8"  ? std::pair{"peak_fp8_tflops", peak_fp8_tflops}
                                                                    : std::pair{"", 0.0};
  if (!*peak.first) throw ConfigError("precision '" + precision + "' is not one of fp32, bf16, fp8");
  if (!(peak.second > 0))
    throw ConfigError(name + " has " + peak.first + " = 0: it has no " + precision + " matmuls (pick another precision)");
  return peak.second * 1e12;
}

// ---- DistConfig ----

void DistConfig::validate() const {
  if (backend != "auto" && backend != "mpi" && backend != "nccl")
    throw ConfigError("backend = '" + backend + "' is not one of auto, mpi, nccl");
  if (ranks_per_node < 0) throw ConfigError("ranks_per_node = " + std::to_string(ranks_per_node) + " must be >= 0");
  if (zero != 0 && zero != 1) throw ConfigError("zero = " + std::to_string(zero) + " is not 0 or 1");
  if (ep < 1) throw ConfigError("ep = " + std::to_string(ep) + " must be >= 1");
  if (!(bucket_mb >= 0.001) || !std::isfinite(bucket_mb))
    throw ConfigError("bucket_mb = " + format_config_number(bucket_mb) + " must be >= 0.001 (1 kB)");
  const std::vector<std::string>& presets = dist::LinkModel::preset_names();
  if (std::find(presets.begin(), presets.end(), link) == presets.end()) {
    std::string known;
    for (const std::string& p : presets) known += (known.empty() ? "" : ", ") + p;
    throw ConfigError("link = '" + link + "' is not one of " + known);
  }
  for (auto [key, v] : {std::pair<const char*, double>{"intra_gbps", intra_gbps}, {"intra_latency_us", intra_latency_us},
                        {"inter_gbps", inter_gbps}, {"inter_latency_us", inter_latency_us}})
    if (!(v >= 0) || !std::isfinite(v))
      throw ConfigError(std::string(key) + " = " + format_config_number(v) + " must be >= 0");
  if (!(timeout_s > 0) || !std::isfinite(timeout_s))
    throw ConfigError("timeout_s = " + format_config_number(timeout_s) + " must be > 0");
  if (overlap != 0 && overlap != 1) throw ConfigError("overlap = " + std::to_string(overlap) + " is not 0 or 1");
  if (dispatch_dtype != "f32" && dispatch_dtype != "bf16" && dispatch_dtype != "fp8")
    throw ConfigError("dispatch_dtype = '" + dispatch_dtype + "' is not one of f32, bf16, fp8");
}

const std::vector<DistConfigField>& dist_config_fields() { return kDistFields; }
void set_dist_key(DistConfig& cfg, const std::string& key, const std::string& value) { set_key(cfg, key, value); }
std::string get_dist_key(const DistConfig& cfg, const std::string& key) { return get_key(cfg, key); }
nlohmann::json to_json(const DistConfig& cfg) { return fields_to_json(cfg); }
DistConfig dist_config_from_json(const nlohmann::json& j) { return fields_from_json<DistConfig>(j, "dist"); }
bool operator==(const DistConfig& a, const DistConfig& b) { return fields_equal(a, b); }

// ---- RunConfig ----

void RunConfig::validate() const {
  model.validate();
  train.validate(model);
  in_section("dist", [&] { dist.validate(); });
}

const std::vector<std::string>& config_sections() {
  static const std::vector<std::string> sections = {"model", "train", "dist"};
  return sections;
}

void check_config_section(const std::string& section) {
  for (const std::string& s : config_sections())
    if (s == section) return;
  throw ConfigError("unknown section [" + section + "]" + did_you_mean(section, config_sections(), "[", "]") +
                    "; the sections are [model], [train] and [dist]");
}

void set_run_key(RunConfig& cfg, const std::string& section, const std::string& key, const std::string& value) {
  check_config_section(section);
  in_section(section, [&] {
    if (section == "model") set_config_key(cfg.model, key, value);
    else if (section == "train") set_train_key(cfg.train, key, value);
    else set_dist_key(cfg.dist, key, value);
  });
}

std::string get_run_key(const RunConfig& cfg, const std::string& section, const std::string& key) {
  check_config_section(section);
  return in_section(section, [&] {
    if (section == "model") return get_config_key(cfg.model, key);
    return section == "train" ? get_train_key(cfg.train, key) : get_dist_key(cfg.dist, key);
  });
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
  os << "\n[dist]\n";
  for (const DistConfigField& f : kDistFields)
    line(f.name, std::visit([&](auto m) { return toml_value(cfg.dist.*m); }, f.member), f.help);
  return os.str();
}

nlohmann::json to_json(const RunConfig& cfg) {
  return {{"model", to_json(cfg.model)}, {"train", to_json(cfg.train)}, {"dist", to_json(cfg.dist)}};
}

RunConfig run_config_from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw ConfigError("expected a JSON object with \"model\" and \"train\", got " + json_text(j));
  RunConfig cfg;
  for (const auto& [section, value] : j.items()) {
    check_config_section(section);
    in_section(section, [&, &section = section, &value = value] {
      if (section == "model") cfg.model = model_config_from_json(value);
      else if (section == "train") cfg.train = train_config_from_json(value);
      else cfg.dist = dist_config_from_json(value);
    });
  }
  return cfg;
}

bool operator==(const RunConfig& a, const RunConfig& b) {
  return a.model == b.model && a.train == b.train && a.dist == b.dist;
}

}  // namespace moelab
