// The `moelab` command line. Every subcommand is a function here; the work lives in the library.
//   moelab info                 version, build options, CPU threads, visible GPUs
//   moelab info --config X.toml [--batch-size B] [--seq-len T] [--set key=value ...] [--print-config]
//                               what the model of a config costs: parameters (total, active per
//                               token, per component), training FLOPs per token, KV cache,
//                               activation memory (train/model_info.h)
//   moelab info --keys          every config key with its type, default and help
//   moelab bench --config X.toml [--device cpu] [--batch-size B] [--seq-len T] [--steps N]
//                               training tokens/s and ms per step on random tokens (train/bench.h)
//   moelab prepare --input FILE... --tokenizer char|byte|bpe [--vocab-size N] --val-fraction F --out DIR
//                               tokenizer.json + llm.c token shards + meta.json (data/prepare.h)
// Later issues add: train, eval, sample, export (listed in `moelab --help` only once they exist).
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "core/allocator.h"
#include "core/cuda_dispatch.h"
#include "core/nn/model.h"
#include "data/prepare.h"
#include "train/bench.h"
#include "train/config_file.h"
#include "train/model_info.h"
#include "moelab/build_info.h"
#if MOELAB_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace {

const char* on_off(bool b) { return b ? "on" : "off"; }

int run_info() {
  using moelab::BuildInfo;
  std::printf("moelab %s (%s build)\n", MOELAB_VERSION, MOELAB_BUILD_TYPE);
  std::printf("build options: CUDA %s%s%s, NCCL %s, MPI %s, native %s, sanitize %s\n", on_off(BuildInfo::cuda),
              BuildInfo::cuda ? " (archs " : "", BuildInfo::cuda ? MOELAB_BUILD_CUDA_ARCHS ")" : "",
              on_off(BuildInfo::nccl), on_off(BuildInfo::mpi), on_off(BuildInfo::native), on_off(BuildInfo::sanitize));
  std::printf("CPU threads: %d (OMP_NUM_THREADS sets it)\n", omp_get_max_threads());
  const int gpus = moelab::cuda_device_count();
  if (gpus == 0) {
    std::printf("GPUs: none%s\n", BuildInfo::cuda ? "" : " (built without CUDA)");
    return 0;
  }
  std::printf("GPUs: %d\n", gpus);
#if MOELAB_WITH_CUDA
  for (int i = 0; i < gpus; ++i) std::printf("  cuda:%d %s\n", i, moelab::cuda::device_description(i).c_str());
#endif
  return 0;
}

struct InfoConfigOptions {
  std::string config;                 // the TOML file; empty: plain `moelab info`
  std::vector<std::string> overrides; // --set key=value, in order
  int64_t batch_size = 0, seq_len = 0;  // > 0: override [train]
  bool print_config = false;
  bool keys = false;
};

// `moelab info --config`: the config's model is declared (not allocated) and counted.
int run_info_config(const InfoConfigOptions& o) {
  std::vector<std::string> overrides = o.overrides;  // --batch-size / --seq-len are sugar, applied last
  if (o.batch_size > 0) overrides.push_back("train.batch_size=" + std::to_string(o.batch_size));
  if (o.seq_len > 0) overrides.push_back("train.seq_len=" + std::to_string(o.seq_len));
  const moelab::RunConfig cfg = moelab::load_config(o.config, overrides);
  if (o.print_config) {
    std::printf("# %s%s\n%s", o.config.c_str(), overrides.empty() ? "" : " with the overrides applied",
                moelab::to_toml(cfg).c_str());
    return 0;
  }
  const moelab::Model model(cfg.model);
  const moelab::ModelInfo info = moelab::model_info(model, cfg.train.batch_size, cfg.train.seq_len);
  std::printf("moelab %s: %s\n", MOELAB_VERSION, o.config.c_str());
  std::fputs(moelab::format_model_info(cfg.model, info).c_str(), stdout);
  return 0;
}

// `moelab info --keys`: the field tables.
int run_info_keys() {
  const moelab::RunConfig defaults;
  std::printf("[model]\n");
  for (const auto& f : moelab::model_config_fields())
    std::printf("  %-26s %-18s default %-10s %s\n", f.name, f.type().c_str(),
                moelab::get_run_key(defaults, "model", f.name).c_str(), f.help);
  std::printf("[train]\n");
  for (const auto& f : moelab::train_config_fields())
    std::printf("  %-26s %-18s default %-10s %s\n", f.name, f.type().c_str(),
                moelab::get_run_key(defaults, "train", f.name).c_str(), f.help);
  return 0;
}

struct BenchCliOptions {
  std::string config, device = "cpu";
  std::vector<std::string> overrides;
  int64_t batch_size = 0, seq_len = 0, steps = 10, warmup = 2;
};

// `moelab bench`: full training steps of the config's model, timed after a warm-up.
int run_bench_cli(const BenchCliOptions& o) {
  std::vector<std::string> overrides = o.overrides;
  if (o.batch_size > 0) overrides.push_back("train.batch_size=" + std::to_string(o.batch_size));
  if (o.seq_len > 0) overrides.push_back("train.seq_len=" + std::to_string(o.seq_len));
  const moelab::RunConfig cfg = moelab::load_config(o.config, overrides);
  moelab::BenchOptions opt;
  opt.batch_size = cfg.train.batch_size;
  opt.seq_len = cfg.train.seq_len;
  opt.steps = o.steps;
  opt.warmup = o.warmup;
  opt.device = o.device == "cuda" ? moelab::Device::CUDA : moelab::Device::CPU;
  const moelab::BenchResult r = moelab::run_bench(cfg.model, opt);
  std::printf("moelab %s bench: %s\n%s", MOELAB_VERSION, o.config.c_str(), moelab::format_bench(r, opt).c_str());
  return 0;
}

struct PrepareCliOptions {
  moelab::PrepareOptions opt;
  std::string tokenizer = "bpe";
};

int run_prepare_cli(PrepareCliOptions o) {
  o.opt.kind = moelab::parse_tokenizer_kind(o.tokenizer);
  o.opt.verbose = true;
  const moelab::PrepareSummary s = moelab::prepare(o.opt);
  std::printf("prepared %s: %s tokenizer, vocab %lld; train %lld tokens in %zu shard(s), val %lld tokens; %.1f s\n",
              s.out_dir.c_str(), moelab::tokenizer_kind_name(s.kind), static_cast<long long>(s.vocab_size),
              static_cast<long long>(s.train_tokens), s.train_shards.size(), static_cast<long long>(s.val_tokens),
              s.total_seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moelab: pretrain DeepSeek-V3-style Mixture-of-Experts transformers on a CPU or a few GPUs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("moelab ") + MOELAB_VERSION);

  int rc = 0;  // the exit code of the subcommand that ran
  CLI::App* info = app.add_subcommand(
      "info", "Print the version, build options, CPU threads and visible GPUs; with --config, what a model costs");
  InfoConfigOptions info_opt;
  CLI::Option* config_opt = info->add_option("--config", info_opt.config, "A TOML config (examples/*.toml): print its "
                                             "parameters, FLOPs per token, KV cache and activation memory");
  info->add_option("--set", info_opt.overrides, "Override a config key: model.<key>=value or train.<key>=value "
                   "(repeatable; applied after the file)")
      ->needs(config_opt);
  info->add_option("--batch-size", info_opt.batch_size, "Override train.batch_size")->needs(config_opt);
  info->add_option("--seq-len", info_opt.seq_len, "Override train.seq_len")->needs(config_opt);
  info->add_flag("--print-config", info_opt.print_config, "Print the resolved config as TOML instead")
      ->needs(config_opt);
  info->add_flag("--keys", info_opt.keys, "List every config key with its type, default and help");
  info->callback([&]() {
    rc = info_opt.keys ? run_info_keys() : info_opt.config.empty() ? run_info() : run_info_config(info_opt);
  });

  CLI::App* bench = app.add_subcommand("bench", "Time training steps (forward, backward, clip, AdamW, bias update) "
                                      "of a config's model on random tokens; prints tokens/s and ms/step");
  BenchCliOptions bench_opt;
  bench->add_option("--config", bench_opt.config, "A TOML config (examples/*.toml)")->required();
  bench->add_option("--device", bench_opt.device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  bench->add_option("--set", bench_opt.overrides, "Override a config key: model.<key>=value or train.<key>=value");
  bench->add_option("--batch-size", bench_opt.batch_size, "Override train.batch_size");
  bench->add_option("--seq-len", bench_opt.seq_len, "Override train.seq_len");
  bench->add_option("--steps", bench_opt.steps, "Timed steps")->check(CLI::PositiveNumber);
  bench->add_option("--warmup", bench_opt.warmup, "Untimed steps before them")->check(CLI::NonNegativeNumber);
  bench->callback([&]() { rc = run_bench_cli(bench_opt); });

  CLI::App* prepare = app.add_subcommand("prepare", "Text files -> tokenizer.json, llm.c token shards (train/val) "
                                        "and meta.json, ready for training");
  PrepareCliOptions prep;
  prepare->add_option("--input", prep.opt.inputs, "Text files, joined in order (each is a document)")
      ->required()
      ->check(CLI::ExistingFile);
  prepare->add_option("--tokenizer", prep.tokenizer, "char, byte or bpe (byte-level BPE trained here)")
      ->check(CLI::IsMember({"char", "byte", "bpe"}));
  prepare->add_option("--vocab-size", prep.opt.vocab_size, "BPE vocabulary size (256 bytes + merges + specials)");
  prepare->add_option("--val-fraction", prep.opt.val_fraction, "The last fraction of the text is the validation split")
      ->check(CLI::Range(0.0, 0.99));
  prepare->add_option("--shard-tokens", prep.opt.shard_tokens, "At most this many tokens per shard file");
  prepare->add_option("--out", prep.opt.out_dir, "Output directory (created if missing)")->required();
  prepare->callback([&]() { rc = run_prepare_cli(prep); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moelab: error: %s\n", e.what());
    return 1;
  }
  return rc;
}
