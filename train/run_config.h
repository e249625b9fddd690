// What one run is configured with: the model (core/nn/config.h) and the training keys, as a TOML
// file holds them (examples/*.toml):
//
//   [model]                 # every ModelConfig key, e.g.
//   hidden_size = 128
//   attention = "mla"
//   [train]                 # TrainConfig keys
//   batch_size = 16
//   seq_len = 256
//   [dist]                  # DistConfig keys: several processes (mpirun), read only by them
//   zero = 1
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
  int64_t batch_size = 8;           // B, sequences per micro-step, all processes together (each of N
                                    // data-parallel processes takes B / N of them)
  int64_t seq_len = 128;            // T, tokens per sequence
  // optimisation
  int64_t steps = 1000;             // optimizer steps
  int64_t grad_accum_steps = 1;     // micro-batches per optimizer step
  double lr = 1e-3;                 // peak learning rate
  double min_lr_ratio = 0.1;        // the schedule ends at lr * min_lr_ratio
  int64_t warmup_steps = 100;       // linear warm-up: step s uses lr * (s + 1) / warmup_steps
  std::string schedule = "cosine";  // cosine | wsd (warmup-stable-decay)
  double decay_fraction = 0.2;      // wsd: the last fraction of the steps decays (cosine shape)
  double weight_decay = 0.1;        // decoupled; not on norms, embeddings, biases
  double beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double grad_clip = 1.0;           // global-norm clipping; 0 = off
  int64_t max_nonfinite = 5;        // stop after this many non-finite steps in a row (each skipped)
  uint64_t seed = 1337;
  // where and in which precision (train/runtime.h)
  std::string device = "cpu";       // cpu | cuda
  std::string precision = "auto";   // auto (cpu: fp32, cuda: bf16) | fp32 | bf16 (mixed: f32 master weights)
                                    // | fp8 | fp8_pow2 (FP8 Linear GEMMs: train/runtime.h)
  // data
  std::string data_dir;             // a `moelab prepare` output directory
  std::string data_mode = "random"; // random windows | sequential (shuffled epochs)
  // evaluation, logging, checkpoints
  int64_t eval_every = 100;         // steps between validation passes; 0 = only at the end
  int64_t eval_batches = 0;         // validation batches per pass; 0 = every full batch of the val split
  int64_t log_every = 10;           // steps between console lines / JSONL records
  std::string out_dir = "runs/default";  // checkpoints + metrics.jsonl
  int64_t ckpt_every = 0;           // steps between checkpoints; 0 = only at the end (and on a signal)
  int64_t keep_last = 3;            // complete checkpoints kept; 0 = all
  double time_limit_s = 0;          // stop (evaluate, save) after this much training time; 0 = none
  // MFU's denominator, fixed so that runs compare: peak_tflops (> 0) per process, else the
  // precision's peak of a hardware file (examples/hardware/*.toml), else on CUDA the H100 SXM's
  // dense bf16 989 TFLOP/s; on the CPU without either, no MFU is reported.
  std::string hardware;
  double peak_tflops = 0;

  void validate(const ModelConfig& model) const;  // also: seq_len <= model.max_position_embeddings
};

// The [dist] section: how several processes (mpirun -np N) share the work (dist/). One process
// ignores it.
struct DistConfig {
  std::string backend = "auto";     // auto (nccl for cuda when built with it, else mpi) | mpi | nccl
  int64_t ranks_per_node = 0;       // emulated nodes: world rank w is on node w / ranks_per_node; 0: one node
  int64_t zero = 0;                 // 0: every rank keeps the whole optimizer state; 1: ZeRO-1 (sharded)
  int64_t ep = 1;                   // expert parallelism: the experts split over groups of ep consecutive
                                    // ranks (world = DP x EP); 1: off
  double bucket_mb = 4;             // gradient bucket size in MB (1e6 bytes) for the overlapped reduction
  std::string link = "none";        // emulated link preset: none, pcie4, pcie5, nvlink4, ib200, ib400
  double intra_gbps = 0;            // > 0: explicit intra-node bandwidth (GB/s), overriding the preset
  double intra_latency_us = 0;      // with intra_gbps: intra-node latency (us)
  double inter_gbps = 0;            // > 0: explicit inter-node bandwidth (GB/s), overriding the preset
  double inter_latency_us = 0;      // with inter_gbps: inter-node latency (us)
  double timeout_s = 300;           // a collective not done by then ends the run, naming the silent ranks
  int64_t overlap = 0;              // 1: each expert-parallel all-to-all of one half of the tokens runs while
                                    // the other half computes (bit for bit the results of 0)
  std::string dispatch_dtype = "f32";  // expert parallelism's dispatch on the wire: f32 (the activations as
                                    // they are), bf16, or fp8 (e4m3 with a scale per 128 channels)

  void validate() const;
};

// One key of a section's table: its name, help text and the struct member it sets.
template <typename S>
struct ConfigFieldOf {
  using Member = std::variant<int64_t S::*, double S::*, bool S::*, uint64_t S::*, std::string S::*>;
  const char* name;
  const char* help;
  Member member;

  std::string type() const;  // "integer", "number", "bool", "string"
};
using TrainConfigField = ConfigFieldOf<TrainConfig>;
using DistConfigField = ConfigFieldOf<DistConfig>;
const std::vector<TrainConfigField>& train_config_fields();

void set_train_key(TrainConfig& cfg, const std::string& key, const std::string& value);
std::string get_train_key(const TrainConfig& cfg, const std::string& key);
bool has_train_key(const std::string& key);
nlohmann::json to_json(const TrainConfig& cfg);
TrainConfig train_config_from_json(const nlohmann::json& j);
bool operator==(const TrainConfig& a, const TrainConfig& b);
inline bool operator!=(const TrainConfig& a, const TrainConfig& b) { return !(a == b); }

const std::vector<DistConfigField>& dist_config_fields();
void set_dist_key(DistConfig& cfg, const std::string& key, const std::string& value);
std::string get_dist_key(const DistConfig& cfg, const std::string& key);
nlohmann::json to_json(const DistConfig& cfg);
DistConfig dist_config_from_json(const nlohmann::json& j);
bool operator==(const DistConfig& a, const DistConfig& b);

// A machine for `moelab plan` (train/plan.h): one [hardware] section of a TOML file
// (examples/hardware/*.toml, each number with its source). Peaks are per device (GPU, or the whole
// CPU), dense, per direction for links; the efficiencies are the fractions of them that real kernels
// and collectives reach, which the plan multiplies in.
struct HardwareProfile {
  std::string name;
  double peak_bf16_tflops = 0;     // dense bf16 matmul peak (0: none)
  double peak_fp8_tflops = 0;      // dense fp8 matmul peak (0: no fp8 tensor cores)
  double peak_fp32_tflops = 0;     // plain fp32 peak (the CPU: its measured fp32 GEMM rate)
  double memory_gib = 0;           // memory per device
  double memory_gbps = 0;          // its bandwidth, GB/s
  int64_t gpus_per_node = 1;       // devices that share the intra-node link
  double intra_gbps = 0;           // intra-node bandwidth per device per direction, GB/s
  double intra_latency_us = 0;
  double inter_gbps = 0;           // inter-node bandwidth per device per direction, GB/s
  double inter_latency_us = 0;
  double compute_efficiency = 0.6;    // fraction of the matmul peak large GEMMs reach
  double attention_efficiency = 0.5;  // fraction of the matmul peak attention (fwd + bwd) reaches
  double memory_efficiency = 0.8;     // fraction of memory bandwidth streaming kernels reach
  double link_efficiency = 0.8;       // fraction of link bandwidth collectives reach

  // Every number finite and >= 0, the peaks and bandwidths a plan divides by > 0, the efficiencies
  // in (0, 1]. Errors name the key, its value and the expected range.
  void validate() const;
  // The peak matmul rate in FLOP/s of a precision: "fp32", "bf16" or "fp8" (throws when the machine
  // has none, naming the key).
  double peak_flops(const std::string& precision) const;
};
using HardwareField = ConfigFieldOf<HardwareProfile>;
const std::vector<HardwareField>& hardware_fields();
void set_hardware_key(HardwareProfile& hw, const std::string& key, const std::string& value);

struct RunConfig {
  ModelConfig model;
  TrainConfig train;
  DistConfig dist;

  void validate() const;  // model, then train (against the model), then dist
};

// The sections of a config file, in order: "model", "train", "dist". check_config_section throws
// "unknown section [modle] (did you mean [model]?); the sections are [model], [train] and [dist]".
const std::vector<std::string>& config_sections();
void check_config_section(const std::string& section);

// Sets `key` of `section`; errors name both: "[model] unknown key 'hiden_size' (did you mean
// 'hidden_size'?)", "[model] num_attention_heads = 'abc' is not an integer",
// "unknown section [modle] (did you mean [model]?)".
void set_run_key(RunConfig& cfg, const std::string& section, const std::string& key, const std::string& value);
std::string get_run_key(const RunConfig& cfg, const std::string& section, const std::string& key);

// One `--set` assignment: "model.hidden_size=256", "train.batch_size=4", "dist.zero=1" or
// "hidden_size=256" (a bare key names a model or train key; dist keys are always written dist.key).
// Errors start with "--set 'assignment': ". Does not validate().
void apply_override(RunConfig& cfg, const std::string& assignment);

// The whole config as a TOML file (every key, every section) that reads back to the same config,
// and as JSON {"model": {...}, "train": {...}, "dist": {...}} (a JSON without "dist" reads as the
// defaults: checkpoints from before the section).
std::string to_toml(const RunConfig& cfg);
nlohmann::json to_json(const RunConfig& cfg);
RunConfig run_config_from_json(const nlohmann::json& j);  // does not validate()
bool operator==(const RunConfig& a, const RunConfig& b);
inline bool operator!=(const RunConfig& a, const RunConfig& b) { return !(a == b); }

}  // namespace moelab
