// The `moelab` command line. Every subcommand is a function here; the work lives in the library.
//   moelab info                 version, build options, CPU threads, visible GPUs
//   moelab info --config X.toml [--batch-size B] [--seq-len T] [--set key=value ...] [--print-config]
//                               what the model of a config costs: parameters (total, active per
//                               token, per component), training FLOPs per token, KV cache,
//                               activation memory (train/model_info.h)
//   moelab info --keys          every config key with its type, default and help
//   moelab bench --config X.toml [--device cpu|cuda] [--precision P] [--batch-size B] [--seq-len T] [--steps N]
//                [--kernel step|attention]
//                               training tokens/s and ms per step on random tokens, MFU against a
//                               GEMM measured in the same run (train/bench.h)
//   moelab plan --config X.toml --hardware H.toml [--nodes N --gpus G --dp D --ep E --zero Z ...] [--sweep]
//   moelab plan --config X.toml --hardware H.toml --decode --batch B --context L [--ep E ...]
//                               predicted step time, communication, memory per GPU, tokens/s and MFU
//                               (or decode speed) on a machine described by a file (train/plan.h)
//   moelab prepare --input FILE... --tokenizer char|byte|bpe [--vocab-size N] --val-fraction F --out DIR
//                               tokenizer.json + llm.c token shards + meta.json (data/prepare.h)
//   moelab export --ckpt DIR --out HF_DIR [--dtype f32|bf16] [--force] [--overwrite]
//                               a checkpoint (or a run's newest) as a Hugging Face DeepSeek-V3
//                               directory: config.json, model.safetensors, tokenizer.json,
//                               tokenizer_config.json, generation_config.json (train/export.h)
//   moelab sample --ckpt DIR [--prompt TEXT] [--max-new-tokens N] [--temperature T] [--top-k K] [--top-p P]
//                 [--seed S] [--no-cache] [--device cpu|cuda]
//                               text from a checkpoint (or a run's newest) with the KV cache; prints
//                               the cache's bytes per token and tokens/s (train/sample.h)
//   moelab train --config X.toml [--set key=value ...] [--resume | --resume-if-present | --overwrite]
//                [--device cpu|cuda] [--precision P]
//                               the training loop (train/trainer.h); SIGINT/SIGTERM saves and exits 0
//   moelab check --ckpt DIR     a checkpoint's files against the sizes and SHA-256 recorded at save
//   moelab eval --ckpt DIR [--batches N] [--data-dir DIR] [--dump-logits FILE] [--device cpu|cuda]
//                               a checkpoint's validation loss (train/trainer.h)
//   moelab ablate --grid G.toml [--jobs N] [--out DIR] [--report-only]
//                               a grid of runs (arms x seeds) and its REPORT.md (train/ablate.h);
//                               SIGINT/SIGTERM stops the runs at a checkpoint, the next call resumes
// --device and --precision (auto | fp32 | bf16 | fp8 | fp8_pow2) are train.device / train.precision: train/runtime.h.
// Several processes: `mpirun -np N moelab train|bench ...` (train/parallel.h). MPI starts before
// the command runs; an error on any rank is printed with its rank and ends the whole job, so that no
// rank waits for it in a collective.
#include <omp.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <memory>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/nn/model.h"
#include "data/prepare.h"
#include "dist/backends.h"
#include "train/ablate.h"
#include "train/bench.h"
#include "train/checkpoint.h"
#include "train/trainer.h"
#include "train/config_file.h"
#include "train/export.h"
#include "train/model_info.h"
#include "train/plan.h"
#include "train/parallel.h"
#include "train/sample.h"
#include "moelab/build_info.h"

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
  for (int i = 0; i < gpus; ++i) std::printf("  cuda:%d %s\n", i, moelab::cuda_device_description(i).c_str());
  return 0;
}

struct InfoConfigOptions {
  std::string config;                 // the TOML file; empty: plain `moelab info`
  std::vector<std::string> overrides; // --set key=value, in order
  int64_t batch_size = 0, seq_len = 0;  // > 0: override [train]
  int ranks = 1;                        // data-parallel processes for the memory per process
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
  // Training memory of one of --ranks data-parallel processes (each with batch_size / ranks
  // sequences), in the run's precision.
  const bool bf16 = cfg.train.device == "cuda" && cfg.train.precision != "fp32";
  const moelab::ModelInfo share =
      moelab::model_info(model, moelab::per_rank_batch(cfg.train.batch_size, o.ranks, "train.batch_size"),
                         cfg.train.seq_len, bf16 ? moelab::DType::BF16 : moelab::DType::F32);
  const moelab::RankMemory mem =
      moelab::rank_memory(model.params().numel_padded(), share.activation_bytes(), o.ranks, cfg.dist.zero, bf16,
                          model.expert_elements(), cfg.dist.ep);
  std::printf("training memory with %d process%s (%s, dist.zero = %lld, dist.ep = %lld), %s\n", o.ranks,
              o.ranks == 1 ? "" : "es", bf16 ? "cuda bf16" : "fp32", static_cast<long long>(cfg.dist.zero),
              static_cast<long long>(cfg.dist.ep), moelab::format_rank_memory(mem, o.ranks, cfg.dist.zero, cfg.dist.ep).c_str());
  return 0;
}

struct PlanCliOptions {
  std::string config, hardware;
  std::vector<std::string> overrides;
  moelab::PlanOptions opt;
  bool sweep = false, decode = false;
  bool ep_given = false, zero_given = false;
  std::string overlap;  // "" = dist.overlap
};

// `moelab plan`: the config's model is declared (not allocated) and its costs put on the machine.
int run_plan_cli(PlanCliOptions o) {
  const moelab::RunConfig cfg = moelab::load_config(o.config, o.overrides);
  const moelab::HardwareProfile hw = moelab::with_emulated_links(moelab::read_hardware_file(o.hardware), cfg.dist);
  const moelab::Model model(cfg.model);
  // The layout options default to the config's [dist] keys, so that `--set dist.ep=4` plans what
  // `mpirun ... --set dist.ep=4` runs.
  if (!o.ep_given) o.opt.ep = cfg.dist.ep;
  if (!o.zero_given) o.opt.zero = cfg.dist.zero;
  o.opt.overlap = o.overlap.empty() ? cfg.dist.overlap != 0 : o.overlap == "on";
  std::printf("moelab %s plan: %s on %s\n", MOELAB_VERSION, o.config.c_str(), o.hardware.c_str());
  if (o.decode) {
    std::fputs(moelab::format_decode_plan(moelab::plan_decode(model, hw, o.opt, cfg.train.seq_len), hw).c_str(), stdout);
    return 0;
  }
  if (o.opt.micro_batch == 0) {  // the config's global batch over the world
    const moelab::PlanLayout l = moelab::plan_layout(cfg.model, hw, o.opt);
    if (cfg.train.batch_size % l.world != 0)
      throw moelab::Error("train.batch_size = " + std::to_string(cfg.train.batch_size) + " is not divisible by the " +
                          std::to_string(l.world) + " GPUs of the plan: pass --micro-batch (sequences per GPU)");
    o.opt.micro_batch = cfg.train.batch_size / l.world;
  }
  if (o.sweep) {
    std::fputs(moelab::format_sweep(moelab::sweep_training(model, cfg.train.seq_len, hw, o.opt, cfg.dist)).c_str(), stdout);
    return 0;
  }
  std::fputs(moelab::format_train_plan(moelab::plan_training(model, cfg.train.seq_len, hw, o.opt, cfg.dist), hw).c_str(),
             stdout);
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
  std::printf("[dist]\n");
  for (const auto& f : moelab::dist_config_fields())
    std::printf("  %-26s %-18s default %-10s %s\n", f.name, f.type().c_str(),
                moelab::get_run_key(defaults, "dist", f.name).c_str(), f.help);
  return 0;
}

// --device / --precision of every subcommand that runs a model (train/runtime.h).
struct DeviceCliOptions {
  std::string device, precision;  // empty: the config's train.device / train.precision
  void add_to(CLI::App* cmd) {
    cmd->add_option("--device", device, "cpu or cuda (default: train.device, cpu)")
        ->check(CLI::IsMember({"cpu", "cuda"}));
    cmd->add_option("--precision", precision, "auto (cpu: fp32, cuda: bf16 mixed), fp32, bf16, fp8 or fp8_pow2 "
                    "(FP8 Linear GEMMs; default: train.precision)")
        ->check(CLI::IsMember({"auto", "fp32", "bf16", "fp8", "fp8_pow2"}));
  }
  // As `--set` overrides, so that they are validated (and saved in checkpoints) like the file's keys.
  void append_to(std::vector<std::string>& overrides) const {
    if (!device.empty()) overrides.push_back("train.device=" + device);
    if (!precision.empty()) overrides.push_back("train.precision=" + precision);
  }
};

struct BenchCliOptions {
  std::string config, kernel = "step";
  DeviceCliOptions where;
  std::vector<std::string> overrides;
  int64_t batch_size = 0, seq_len = 0, steps = 10, warmup = 2;
  double baseline_tokens_per_s = 0;
};

// `moelab bench`: full training steps of the config's model, timed after a warm-up.
int run_bench_cli(const BenchCliOptions& o) {
  std::vector<std::string> overrides = o.overrides;
  if (o.batch_size > 0) overrides.push_back("train.batch_size=" + std::to_string(o.batch_size));
  if (o.seq_len > 0) overrides.push_back("train.seq_len=" + std::to_string(o.seq_len));
  o.where.append_to(overrides);
  const moelab::RunConfig cfg = moelab::load_config(o.config, overrides);
  moelab::BenchOptions opt;
  opt.batch_size = cfg.train.batch_size;
  opt.seq_len = cfg.train.seq_len;
  opt.steps = o.steps;
  opt.warmup = o.warmup;
  opt.device = cfg.train.device;
  opt.precision = cfg.train.precision;
  opt.dist = cfg.dist;
  opt.baseline_tokens_per_s = o.baseline_tokens_per_s;
  if (o.kernel == "attention") {
    const moelab::AttentionBenchResult r = moelab::run_attention_bench(cfg.model, opt);
    std::printf("moelab %s bench --kernel attention: %s\n%s", MOELAB_VERSION, o.config.c_str(),
                moelab::format_attention_bench(r).c_str());
    return 0;
  }
  const moelab::BenchResult r = moelab::run_bench(cfg.model, opt);
  if (r.rank != 0) return 0;  // several processes: the first one reports
  std::printf("moelab %s bench: %s\n%s", MOELAB_VERSION, o.config.c_str(), moelab::format_bench(r, opt).c_str());
  return 0;
}

// SIGINT/SIGTERM during `moelab train`: the handler may only set a flag (the one piece of global
// state moelab has, because a signal handler has no other way in); the trainer finishes the step,
// saves a checkpoint and returns, and the process exits 0.
std::atomic<bool> g_stop_requested{false};
extern "C" void request_stop(int) { g_stop_requested.store(true); }

struct TrainCliOptions {
  std::string config;
  std::vector<std::string> overrides;
  DeviceCliOptions where;
  bool resume = false, resume_if_present = false, overwrite = false;
};

int run_train_cli(const TrainCliOptions& o) {
  std::vector<std::string> overrides = o.overrides;
  o.where.append_to(overrides);
  const moelab::RunConfig cfg = moelab::load_config(o.config, overrides);
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  moelab::TrainOptions opt;
  opt.resume = o.resume;
  opt.resume_if_present = o.resume_if_present;
  opt.overwrite = o.overwrite;
  opt.stop = &g_stop_requested;
  moelab::train(cfg, opt);
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
  for (const std::string& w : s.warnings) std::fprintf(stderr, "WARNING: %s\n", w.c_str());
  std::printf("prepared %s: %s tokenizer, vocab %lld; train %lld tokens in %zu shard(s), val %lld tokens; %.1f s\n",
              s.out_dir.c_str(), moelab::tokenizer_kind_name(s.kind), static_cast<long long>(s.vocab_size),
              static_cast<long long>(s.train_tokens), s.train_shards.size(), static_cast<long long>(s.val_tokens),
              s.total_seconds);
  return 0;
}

struct ExportCliOptions {
  std::string ckpt, out, dtype = "f32";
  bool force = false, overwrite = false;
};

// `moelab export`: the checkpoint's HF directory; what HF would compute differently is printed as
// WARNING lines (stderr), what is exact but worth knowing as notes.
int run_export_cli(const ExportCliOptions& o) {
  moelab::ExportOptions opt;
  opt.dtype = moelab::dtype_from_name(o.dtype);
  opt.force = o.force;
  opt.overwrite = o.overwrite;
  const moelab::ExportSummary s = moelab::export_checkpoint(o.ckpt, o.out, opt);
  for (const auto& w : s.warnings) std::fprintf(stderr, "WARNING: %s\n", w.c_str());
  for (const auto& n : s.notes) std::printf("note: %s\n", n.c_str());
  std::string files;
  for (const auto& f : s.files) files += (files.empty() ? "" : ", ") + f;
  std::printf("exported %s (step %lld) to %s: %lld tensors, %lld parameters, %s, %.1f MB; %s\n", s.checkpoint.c_str(),
              static_cast<long long>(s.step), s.out_dir.c_str(), static_cast<long long>(s.tensors),
              static_cast<long long>(s.parameters), moelab::dtype_name(s.dtype), s.bytes / 1e6, files.c_str());
  return 0;
}

struct SampleCliOptions {
  std::string ckpt, prompt = "\n";
  moelab::SampleOptions opt;
  DeviceCliOptions where;
  bool no_cache = false;
};

// `moelab sample`: the prompt and its continuation, then what the run cost: the KV cache per
// token and the speed.
int run_sample_cli(const SampleCliOptions& o) {
  moelab::LoadedCheckpoint ck = moelab::load_checkpoint(moelab::resolve_checkpoint(o.ckpt));
  const moelab::Runtime rt = moelab::make_runtime(o.where.device.empty() ? "cpu" : o.where.device,
                                                  o.where.precision.empty() ? "auto" : o.where.precision);
  const std::unique_ptr<moelab::Model> model = moelab::place_model(std::move(ck.model), rt);
  MOELAB_CHECK(ck.tokenizer != nullptr, "checkpoint ", ck.path, " has no tokenizer (its run had none), so --prompt "
               "cannot be encoded; train from `moelab prepare` data to get one");
  const std::vector<int32_t> prompt = ck.tokenizer->encode_with_special(o.prompt);
  moelab::SampleOptions opt = o.opt;
  opt.use_cache = !o.no_cache;
  opt.vocab_limit = ck.tokenizer->vocab_size();  // ids past the tokenizer's (a padded vocabulary) have no text
  moelab::SampleStats s;
  const std::vector<int32_t> generated = moelab::generate(*model, prompt, opt, &s, &rt);
  const std::string text = ck.tokenizer->decode(prompt) + ck.tokenizer->decode(generated);
  std::fwrite(text.data(), 1, text.size(), stdout);  // raw bytes: the text may hold NULs
  std::printf("\n---\ncheckpoint %s (step %lld): %lld prompt + %lld new tokens, ", ck.path.c_str(),
              static_cast<long long>(ck.state.step), static_cast<long long>(s.prompt_tokens),
              static_cast<long long>(s.new_tokens));
  if (opt.temperature == 0) std::printf("greedy\n");
  else std::printf("temperature %g, top-k %lld, top-p %g, seed %llu\n", opt.temperature,
                   static_cast<long long>(opt.top_k), opt.top_p, static_cast<unsigned long long>(opt.seed));
  if (s.context_full)
    std::printf("note: stopped at max_position_embeddings = %lld tokens (the context is not slid)\n",
                static_cast<long long>(ck.cfg.model.max_position_embeddings));
  std::printf("%s\n", moelab::format_kv_cache(ck.cfg.model, s).c_str());
  std::printf("%lld tokens in %.3f s: %.1f tokens/s (first step, the %lld-token prompt: %.1f ms, then %.2f ms/token; "
              "%s)\n",
              static_cast<long long>(s.new_tokens), s.seconds(), s.tokens_per_second(),
              static_cast<long long>(s.prompt_tokens), 1e3 * s.prefill_seconds,
              s.new_tokens > 1 ? 1e3 * s.decode_seconds / static_cast<double>(s.new_tokens - 1) : 0.0,
              opt.use_cache ? "with the KV cache" : "--no-cache: every step re-runs the whole sequence");
  return 0;
}

// `moelab ablate`: the grid's runs (this executable trains each), the report, and the plots when
// examples/plot_ablation.py and matplotlib are there.
int run_ablate_cli(moelab::AblateOptions o) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  o.moelab = ec ? "moelab" : self.string();
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  o.stop = &g_stop_requested;
  const moelab::AblateResult r = moelab::run_ablation(o);
  if (r.report.empty()) {
    std::printf("ablate: stopped; %d run(s) saved a checkpoint and resume when the same command runs again\n",
                r.interrupted);
    return 130;
  }
  std::printf("ablate: %d runs (%d trained now, %d finished before); report: %s\n", r.runs, r.trained, r.skipped,
              r.report.c_str());
  // The plots: examples/plot_ablation.py of this source tree (the executable is <root>/<build>/train/moelab).
  const std::string out = fs::path(r.report).parent_path().string();
  for (const fs::path& root : {fs::current_path(), self.parent_path().parent_path().parent_path()}) {
    const fs::path script = root / "examples" / "plot_ablation.py";
    if (!fs::exists(script)) continue;
    // The first python3 on the PATH, else Debian's (which scripts/setup.sh gives matplotlib).
    for (const char* python : {"python3", "/usr/bin/python3"}) {
      const std::string cmd = std::string(python) + " '" + script.string() + "' '" + out + "' 2>/dev/null";
      if (std::system(cmd.c_str()) == 0) return 0;
    }
    std::printf("ablate: no plots: python3 %s %s failed (needs numpy and matplotlib)\n", script.c_str(), out.c_str());
    return 0;
  }
  std::printf("ablate: plots: python3 examples/plot_ablation.py %s\n", out.c_str());
  return 0;
}

struct EvalCliOptions {
  std::string ckpt;
  moelab::EvalOptions opt;
  DeviceCliOptions where;
};

// `moelab eval`: a checkpoint's validation loss, as the trainer measures it.
int run_eval_cli(const EvalCliOptions& o) {
  moelab::EvalOptions opt = o.opt;
  if (!o.where.device.empty()) opt.device = o.where.device;
  if (!o.where.precision.empty()) opt.precision = o.where.precision;
  const moelab::EvalResult r = moelab::evaluate_checkpoint(o.ckpt, opt);
  std::printf("val loss %.4f (ppl %.2f) over %lld of the val split's %lld windows: checkpoint %s (step %lld), %s, "
              "%.1f s\n", r.loss, std::exp(r.loss), static_cast<long long>(r.windows),
              static_cast<long long>(r.split_windows), r.checkpoint.c_str(), static_cast<long long>(r.step),
              r.runtime.c_str(), r.seconds);
  if (!opt.dump_logits.empty())
    std::printf("the first val batch's tokens, logits and losses: %s\n", opt.dump_logits.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moelab: pretrain DeepSeek-V3-style Mixture-of-Experts transformers on a CPU or a few GPUs"};
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();  // --help shows every option's default
  app.set_version_flag("--version", std::string("moelab ") + MOELAB_VERSION);
  // Errors name the file, key and value; where in moelab's source they were raised only on request.
  bool verbose = false;
  app.add_flag("--verbose", verbose, "Errors also give the moelab source file:line that raised them (for bug reports)");
  app.fallthrough();  // so that --verbose may also follow the subcommand

  int rc = 0;  // the exit code of the subcommand that ran
  CLI::App* info = app.add_subcommand(
      "info", "Print the version, build options, CPU threads and visible GPUs; with --config, what a model costs");
  InfoConfigOptions info_opt;
  CLI::Option* config_opt = info->add_option("--config", info_opt.config, "A TOML config (examples/*.toml): print its "
                                             "parameters, FLOPs per token, KV cache and activation memory");
  info->add_option("--set", info_opt.overrides, "Override a config key: model.<key>=value, train.<key>=value or dist.<key>=value "
                   "(repeatable; applied after the file)")
      ->needs(config_opt);
  info->add_option("--batch-size", info_opt.batch_size, "Override train.batch_size")->needs(config_opt);
  info->add_option("--seq-len", info_opt.seq_len, "Override train.seq_len")->needs(config_opt);
  info->add_option("--ranks", info_opt.ranks, "Data-parallel processes: the training memory of each (with "
                   "dist.zero from the config or --set)")->needs(config_opt)->check(CLI::PositiveNumber);
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
  bench_opt.where.add_to(bench);
  bench->add_option("--set", bench_opt.overrides, "Override a config key: model.<key>=value, train.<key>=value or "
                    "dist.<key>=value");
  bench->add_option("--batch-size", bench_opt.batch_size, "Override train.batch_size");
  bench->add_option("--seq-len", bench_opt.seq_len, "Override train.seq_len");
  bench->add_option("--steps", bench_opt.steps, "Timed steps")->check(CLI::PositiveNumber);
  bench->add_option("--warmup", bench_opt.warmup, "Untimed steps before them")->check(CLI::NonNegativeNumber);
  bench->add_option("--baseline-tokens-per-s", bench_opt.baseline_tokens_per_s, "Under mpirun: one process's tokens/s "
                    "on this machine (`moelab bench` alone, all the cores' threads): prints the scaling efficiency")
      ->check(CLI::NonNegativeNumber);
  bench->add_option("--kernel", bench_opt.kernel, "step (a whole training step, default) or attention (one layer's "
                    "attention forward + backward on the config's shapes)")
      ->check(CLI::IsMember({"step", "attention"}));
  bench->callback([&]() { rc = run_bench_cli(bench_opt); });

  CLI::App* plan = app.add_subcommand("plan", "Predict a config's training step (time by phase, communication, "
                                     "memory per GPU, tokens/s, MFU) or decode speed on a machine described by a file");
  PlanCliOptions plan_opt;
  plan->add_option("--config", plan_opt.config, "A TOML config (examples/*.toml)")->required();
  plan->add_option("--hardware", plan_opt.hardware, "A hardware file (examples/hardware/*.toml)")->required();
  plan->add_option("--set", plan_opt.overrides, "Override a config key (model.<key>=value, train.<key>=value, "
                   "dist.<key>=value)");
  plan->add_option("--nodes", plan_opt.opt.nodes, "Nodes (default: what --gpus or --dp x --ep need, else 1)")
      ->check(CLI::NonNegativeNumber);
  plan->add_option("--gpus", plan_opt.opt.gpus, "GPUs in all (default: --nodes x the machine's GPUs per node)")
      ->check(CLI::NonNegativeNumber);
  plan->add_option("--dp", plan_opt.opt.dp, "Data-parallel degree (default: GPUs / --ep)")->check(CLI::NonNegativeNumber);
  CLI::Option* ep_opt = plan->add_option("--ep", plan_opt.opt.ep, "Expert-parallel group size (default: dist.ep)")
                            ->check(CLI::PositiveNumber);
  CLI::Option* zero_opt =
      plan->add_option("--zero", plan_opt.opt.zero, "ZeRO stage: 0 or 1 (default: dist.zero)")->check(CLI::Range(0, 1));
  plan->add_option("--overlap", plan_opt.overlap, "on|off: the two-chunk expert-parallel overlap (default: dist.overlap)")
      ->check(CLI::IsMember({"on", "off"}));
  plan->add_option("--precision", plan_opt.opt.precision, "auto (bf16 where the machine has it, else fp32), fp32, "
                   "bf16 or fp8 (the matmuls; attention stays bf16)")
      ->capture_default_str()->check(CLI::IsMember({"auto", "fp32", "bf16", "fp8"}));
  plan->add_option("--dispatch-dtype", plan_opt.opt.dispatch_dtype, "f32, bf16 or fp8 (default: dist.dispatch_dtype)")
      ->check(CLI::IsMember({"f32", "bf16", "fp8"}));
  plan->add_option("--max-nodes-per-token", plan_opt.opt.max_nodes_per_token, "Node-limited routing M (default: "
                   "model.max_nodes_per_token; 0 = no limit)")->check(CLI::NonNegativeNumber);
  plan->add_option("--micro-batch", plan_opt.opt.micro_batch, "Sequences per GPU per step (default: train.batch_size "
                   "/ GPUs)")->check(CLI::NonNegativeNumber);
  plan->add_option("--imbalance", plan_opt.opt.imbalance, "The busiest EP rank's expert rows over the mean")
      ->capture_default_str()->check(CLI::Range(1.0, 1e6));
  plan->add_flag("--shard-expert-weights", plan_opt.opt.shard_expert_weights, "Plan the memory of a layout that keeps "
                 "only its own experts' weights and gradients (moelab keeps every expert's)");
  plan->add_flag("--sweep", plan_opt.sweep, "Rank every DP x EP x ZeRO layout of the GPUs that fits in memory");
  plan->add_flag("--decode", plan_opt.decode, "Plan generation instead: KV cache, time per output token");
  plan->add_option("--batch", plan_opt.opt.batch, "--decode: sequences decoding together over all the GPUs")
      ->capture_default_str()->check(CLI::PositiveNumber);
  plan->add_option("--context", plan_opt.opt.context, "--decode: tokens in each sequence's cache (default: train.seq_len)")
      ->check(CLI::NonNegativeNumber);
  plan->callback([&]() {
    plan_opt.ep_given = ep_opt->count() > 0;
    plan_opt.zero_given = zero_opt->count() > 0;
    rc = run_plan_cli(plan_opt);
  });

  CLI::App* train = app.add_subcommand("train", "Train a model on prepared data: AdamW, schedules, evaluation, "
                                      "checkpoints (SIGINT/SIGTERM saves and exits 0), metrics.jsonl");
  TrainCliOptions train_opt;
  train->add_option("--config", train_opt.config, "A TOML config ([model] and [train], e.g. examples/*.toml)")
      ->required();
  train->add_option("--set", train_opt.overrides, "Override a config key: model.<key>=value, train.<key>=value or dist.<key>=value "
                    "(repeatable; applied after the file)");
  CLI::Option* resume_flag =
      train->add_flag("--resume", train_opt.resume, "Continue from the newest complete checkpoint in train.out_dir "
                      "(an error when there is none)");
  CLI::Option* if_present_flag = train->add_flag("--resume-if-present", train_opt.resume_if_present,
                                                 "Continue when train.out_dir has a checkpoint, else start fresh");
  train->add_flag("--overwrite", train_opt.overwrite, "Start over in a train.out_dir that holds a run: its "
                  "checkpoints and metrics.jsonl are removed first (without it, such a directory is an error)")
      ->excludes(resume_flag)
      ->excludes(if_present_flag);
  train_opt.where.add_to(train);
  train->callback([&]() { rc = run_train_cli(train_opt); });

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

  CLI::App* export_cmd = app.add_subcommand(
      "export", "Write a checkpoint as a Hugging Face DeepSeek-V3 directory (config.json, model.safetensors, "
                "tokenizer.json + tokenizer_config.json, generation_config.json)");
  ExportCliOptions export_opt;
  export_cmd->add_option("--ckpt", export_opt.ckpt, "A checkpoint directory, or a run directory (its newest "
                         "checkpoint)")->required();
  export_cmd->add_option("--out", export_opt.out, "Output directory (written as <out>.tmp, then renamed)")->required();
  export_cmd->add_option("--dtype", export_opt.dtype, "Weights in f32 or bf16 (the router bias stays f32)")
      ->check(CLI::IsMember({"f32", "bf16"}));
  export_cmd->add_flag("--force", export_opt.force, "Export even what DeepseekV3ForCausalLM cannot load "
                       "(attention = mha | gqa), with a warning");
  export_cmd->add_flag("--overwrite", export_opt.overwrite, "Replace an existing non-empty --out directory");
  export_cmd->callback([&]() { rc = run_export_cli(export_opt); });

  CLI::App* sample = app.add_subcommand("sample", "Generate text from a checkpoint with a KV cache (MLA caches only "
                                       "the latent and the rope key); prints the cache's bytes/token and tokens/s");
  SampleCliOptions sample_opt;
  sample->add_option("--ckpt", sample_opt.ckpt, "A checkpoint directory, or a run directory (its newest checkpoint)")
      ->required();
  sample->add_option("--prompt", sample_opt.prompt, "The text to continue (special tokens such as <|endoftext|> are "
                     "recognised); default a newline");
  sample->add_option("--max-new-tokens", sample_opt.opt.max_new_tokens, "Tokens to generate (fewer if the sequence "
                     "reaches max_position_embeddings)")
      ->check(CLI::NonNegativeNumber);
  sample->add_option("--temperature", sample_opt.opt.temperature, "Divides the logits; 0 = greedy")
      ->check(CLI::NonNegativeNumber);
  sample->add_option("--top-k", sample_opt.opt.top_k, "Sample among the k most likely tokens; 0 = all")
      ->check(CLI::NonNegativeNumber);
  sample->add_option("--top-p", sample_opt.opt.top_p, "Nucleus: the smallest set of most likely tokens whose "
                     "probability reaches p, in (0, 1]; 1 = all");
  sample->add_option("--seed", sample_opt.opt.seed, "Seed of the Philox draws: the same seed gives the same text");
  sample_opt.where.add_to(sample);
  sample->add_flag("--no-cache", sample_opt.no_cache, "Re-run the whole sequence every step (the reference the "
                   "cached path matches; slower)");
  sample->callback([&]() { rc = run_sample_cli(sample_opt); });

  CLI::App* check = app.add_subcommand("check", "Verify a checkpoint: every file against the size and SHA-256 "
                                      "recorded when it was saved");
  std::string check_ckpt;
  check->add_option("--ckpt", check_ckpt, "A checkpoint directory, or a run directory (its newest checkpoint)")
      ->required();
  check->callback([&]() {
    const std::string dir = moelab::resolve_checkpoint(check_ckpt);
    for (const std::string& line : moelab::check_checkpoint(dir)) std::printf("%s/%s\n", dir.c_str(), line.c_str());
    std::printf("checkpoint %s: OK\n", dir.c_str());
  });

  CLI::App* ablate = app.add_subcommand("ablate", "Run a grid of training runs (arms of --set overrides x seeds, one "
                                       "budget) and write a report comparing the arms with their seed noise");
  moelab::AblateOptions ablate_opt;
  ablate->add_option("--grid", ablate_opt.grid, "The grid file (examples/ablations/*.toml)")->required();
  ablate->add_option("--jobs", ablate_opt.jobs, "Runs at a time (the cores are split between them)")
      ->check(CLI::PositiveNumber);
  ablate->add_option("--threads", ablate_opt.threads, "OpenMP threads per run (default: the cores / --jobs); a run's "
                     "numbers depend on it, so keep it when a grid is resumed")
      ->check(CLI::PositiveNumber);
  ablate->add_option("--out", ablate_opt.out_dir, "Output directory (default: runs/ablate_<grid file name>)");
  ablate->add_flag("--report-only", ablate_opt.report_only, "Only write the report of the finished runs");
  ablate->callback([&]() { rc = run_ablate_cli(ablate_opt); });

  CLI::App* eval = app.add_subcommand("eval", "A checkpoint's validation loss, as training reports it (over the whole "
                                     "val split unless train.eval_batches says fewer batches)");
  EvalCliOptions eval_opt;
  eval->add_option("--ckpt", eval_opt.ckpt, "A checkpoint directory, or a run directory (its newest checkpoint)")
      ->required();
  eval->add_option("--batches", eval_opt.opt.batches, "Validation batches; 0 = the whole val split (default -1: the "
                   "run's train.eval_batches)")
      ->check(CLI::NonNegativeNumber);
  eval->add_option("--data-dir", eval_opt.opt.data_dir, "Prepared data to evaluate on (default: the run's "
                   "train.data_dir)");
  eval->add_option("--dump-logits", eval_opt.opt.dump_logits, "Also write the first val batch's tokens, logits (main "
                   "head and each MTP depth) and losses to this safetensors file, to compare with another implementation");
  eval_opt.where.add_to(eval);
  eval->callback([&]() { rc = run_eval_cli(eval_opt); });

  const moelab::dist::WorldInfo world = moelab::dist::world_from_environment();
  const std::string where = world.size > 1 ? " (rank " + std::to_string(world.rank) + " of " +
                                                 std::to_string(world.size) + ")"
                                           : "";
  try {
    std::unique_ptr<moelab::dist::MpiSession> mpi;
    if (world.size > 1) mpi = std::make_unique<moelab::dist::MpiSession>();
    try {
      app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
      return app.exit(e);
    } catch (const std::exception& e) {
      const auto* ours = dynamic_cast<const moelab::Error*>(&e);
      std::fprintf(stderr, "moelab: error%s: %s\n", where.c_str(),
                   ours && !verbose ? ours->message().c_str() : e.what());
      std::fflush(stderr);
      moelab::dist::abort_job(1);  // the other ranks may be waiting for this one: end them all
      return 1;
    }
  } catch (const std::exception& e) {  // MPI did not start
    std::fprintf(stderr, "moelab: error%s: %s\n", where.c_str(), e.what());
    return 1;
  }
  return rc;
}
