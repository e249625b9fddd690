// `moelab train` and `moelab eval` (train/trainer.h). train() reads top to bottom: set-up (data,
// model, optimizer and data position, fresh or from the newest checkpoint), then the loop around
// train/step.h's step (schedule, step, non-finite count, log, eval, checkpoint, stop), then the
// final eval and save. The helpers above it build the pieces and the log's lines and records.
#include "train/trainer.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>

#include "core/nn/model.h"
#include "core/safetensors.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "train/bench.h"
#include "train/checkpoint.h"
#include "train/config_file.h"
#include "train/metrics.h"
#include "train/model_info.h"
#include "train/optimizer.h"
#include "train/parallel.h"
#include "train/runtime.h"
#include "train/schedule.h"
#include "train/step.h"

namespace moelab {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// This process's slice of the global batch (data/loader.h: rank r of N takes rows [r B/N, (r+1) B/N)).
LoaderConfig loader_config(const RunConfig& cfg, const std::vector<std::string>& shards, int64_t vocab, bool train,
                           const dist::WorldInfo& world) {
  LoaderConfig lc;
  lc.shards = shards;
  lc.vocab_size = vocab;
  lc.batch_size = per_rank_batch(cfg.train.batch_size, world.size, "train.batch_size");
  lc.rank = world.rank;
  lc.world_size = world.size;
  lc.window = cfg.train.seq_len + 1 + cfg.model.num_nextn_predict_layers;
  lc.seed = cfg.train.seed;
  if (train) {
    lc.mode = parse_loader_mode(cfg.train.data_mode);
  } else {  // validation: the first windows in file order, the same ones every pass
    lc.mode = LoaderMode::Sequential;
    lc.shuffle = false;
  }
  return lc;
}

struct Evaluation {
  double loss = 0;
  int64_t windows = 0, split_windows = 0;  // evaluated, of the split's
  bool whole = false;                      // every full batch of the split
};

// Mean main-model loss over the val split's windows in file order: every full global batch of them
// (eval_batches = 0), or the first eval_batches batches. With several processes each evaluates its
// slice of every batch and the slices' means are averaged over the ranks (sync).
Evaluation evaluate(const Model& model, const RunConfig& cfg, const LoaderConfig& val_cfg, const Runtime& rt,
                    Arena& arena, GradSync* sync = nullptr) {
  Loader val(val_cfg);
  const Context ctx = rt.context(arena, val_cfg.batch_size, cfg.train.seq_len);
  const int64_t full = std::max<int64_t>(1, val.num_windows() / val.global_batch());
  const int64_t batches = cfg.train.eval_batches > 0 ? std::min(cfg.train.eval_batches, full) : full;
  double sum = 0;
  for (int64_t i = 0; i < batches; ++i) {
    arena.reset();
    Model::Saved saved;
    model.forward(ctx, rt.upload(val.next()), saved);
    sum += model.read_losses(ctx, saved).main;
  }
  if (sync) {
    std::vector<double> v = {sum};
    sync->sum(v);
    sum = v[0] / sync->ranks();
  }
  return {sum / static_cast<double>(batches), batches * val.global_batch(), val.num_windows(), batches == full};
}

// "the whole val split (848 of its 858 windows; the last 10 fill no batch)", "the first 320 of the
// val split's 858 windows"
std::string coverage(const Evaluation& e) {
  const std::string n = std::to_string(e.split_windows), w = std::to_string(e.windows);
  if (!e.whole) return "the first " + w + " of the val split's " + n + " windows";
  if (e.windows >= e.split_windows) return "the whole val split (" + n + " windows)";
  return "the whole val split (" + w + " of its " + n + " windows; the last " +
         std::to_string(e.split_windows - e.windows) + " fill no batch)";
}

std::string fixed4(double x) {  // "1.5186": rounded as the val loss line prints it
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4f", x);
  return buf;
}

std::string human(double x) {
  char buf[32];
  if (x >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", x / 1e6);
  else if (x >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", x / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", x);
  return buf;
}

// The prepared data of train.data_dir, checked against the model's vocabulary.
PrepareSummary training_data(const RunConfig& cfg) {
  const TrainConfig& tc = cfg.train;
  MOELAB_CHECK(!tc.data_dir.empty(), "train: train.data_dir is empty (run `moelab prepare` and point data_dir at it)");
  PrepareSummary data = read_prepared(tc.data_dir);
  MOELAB_CHECK(data.vocab_size <= cfg.model.vocab_size, "train: the data in ", tc.data_dir, " has a vocabulary of ",
               data.vocab_size, " tokens but model.vocab_size is ", cfg.model.vocab_size);
  MOELAB_CHECK(!data.train_shards.empty(), "train: ", tc.data_dir, " has no train shards");
  return data;
}

// Where a run starts: a fresh model, or (with --resume) the newest checkpoint in out_dir.
struct Start {
  std::unique_ptr<Model> model;
  TrainerState state;
  std::string resumed_from;  // empty: a fresh start
};

Start start_or_resume(const RunConfig& cfg, const Runtime& rt, const TrainOptions& o, bool leader) {
  MOELAB_CHECK(!(o.overwrite && (o.resume || o.resume_if_present)),
               "train: --overwrite starts over and --resume continues: pass one of them");
  const RunStart how = o.overwrite ? RunStart::Overwrite
                       : o.resume_if_present ? RunStart::ResumeIfPresent
                       : o.resume ? RunStart::Resume
                                  : RunStart::Fresh;
  Start s;
  s.state.seed = cfg.train.seed;
  s.resumed_from = prepare_run_dir(cfg.train.out_dir, how, leader);
  if (s.resumed_from.empty()) {
    s.model = new_model(cfg.model, cfg.train.seed, rt);
    return s;
  }
  LoadedCheckpoint ck = load_checkpoint(s.resumed_from);
  MOELAB_CHECK(ck.cfg.model == cfg.model, "train --resume: the model config of ", s.resumed_from,
               " differs from this run's (resume with the same [model])");
  s.model = place_model(std::move(ck.model), rt);
  s.state = ck.state;
  return s;
}

// MFU's denominator for the whole run (train.peak_tflops, train.hardware; run_config.h), fixed, so
// that two runs' MFU compare; source says where it came from, for the banner.
struct MfuPeak {
  double gflops = 0;  // 0: no MFU
  std::string source;
};

MfuPeak mfu_peak(const TrainConfig& tc, const Runtime& rt, int ranks) {
  const std::string precision = rt.act == DType::BF16 ? "bf16" : "fp32";
  char buf[256];
  auto peak = [&](double tflops, const std::string& what) {
    std::snprintf(buf, sizeof buf, "%s: %g TFLOP/s x %d", what.c_str(), tflops, ranks);
    return MfuPeak{tflops * 1e3 * ranks, buf};
  };
  if (tc.peak_tflops > 0) return peak(tc.peak_tflops, "train.peak_tflops");
  if (!tc.hardware.empty()) {
    const HardwareProfile hw = read_hardware_file(tc.hardware);
    return peak(hw.peak_flops(precision) / 1e12, hw.name + " " + precision + " peak (" + tc.hardware + ")");
  }
  if (rt.device == Device::CUDA) return peak(kH100Bf16DenseTflops, "the H100 SXM's dense bf16 peak");
  return {0, "nothing: no MFU (set train.hardware or train.peak_tflops)"};
}

// The run's console lines and metrics.jsonl records (train/metrics.h writes them).
class RunLog {
 public:
  // resumed_step: the step of the checkpoint a resumed run starts from (-1: a fresh run).
  // Only the first process of a data-parallel run logs (leader): the others keep quiet.
  RunLog(const TrainConfig& tc, bool console, bool leader, int64_t resumed_step, const ModelInfo& info,
         MfuPeak peak, double tokens_per_step, std::vector<int64_t> moe_layers)
      : log_(leader ? tc.out_dir : "", console && leader, resumed_step), tc_(tc), info_(info), peak_(std::move(peak)),
        tokens_per_step_(tokens_per_step), moe_layers_(std::move(moe_layers)) {}

  MetricsLog& metrics() { return log_; }

  // processes: "" on one process, else e.g. "2 processes (mpi, zero 1, link pcie4) x ".
  void banner(const Runtime& rt, const std::string& processes, const std::string& resumed_from) {
    char buf[1024];
    std::snprintf(buf, sizeof buf,
                  "moelab train: %lld params (%lld active/token), %.2f MFLOP/token, %s tokens/step, %s, %s%d threads "
                  "(MFU against %s), %lld steps%s%s",
                  static_cast<long long>(info_.params.total), static_cast<long long>(info_.params.active),
                  info_.flops_per_token / 1e6, human(tokens_per_step_).c_str(), rt.describe().c_str(),
                  processes.c_str(), omp_get_max_threads(), peak_.source.c_str(),
                  static_cast<long long>(tc_.steps), resumed_from.empty() ? "" : ", resumed from ",
                  resumed_from.c_str());
    log_.print_line(buf);
  }

  // A logged step: losses, lr, norm, rates (tokens/s, GFLOP/s, MFU), MaxVio, aux loss, the
  // assignments the capacity factor dropped in this step (this process's), expert loads,
  // and with the aux-loss-free bias each layer's bias range after the update (read here, at the log
  // step, not in every forward: on the GPU each read is a small copy to the host).
  // train_seconds: the training time so far, this run's and the resumed ones' (metrics.h).
  // ep: expert parallelism's record fields (empty: none).
  void step(int64_t step, double lr, const StepStats& st, double seconds, double train_seconds, double val_loss,
            const Model& model, const nlohmann::ordered_json& ep) {
    nlohmann::ordered_json expert_load = nlohmann::ordered_json::object();
    for (size_t i = 0; i < st.loads.size(); ++i) expert_load[std::to_string(moe_layers_[i])] = st.loads[i];
    const Model::Losses& l = st.losses;
    const double tps = tokens_per_step_ / seconds, flops = tps * info_.flops_per_token;
    nlohmann::ordered_json rec = {{"step", step},        {"loss", l.total},      {"loss_main", l.main},
                                  {"loss_mtp", l.mtp},   {"lr", lr},             {"grad_norm", st.grad_norm},
                                  {"tokens_per_s", tps}, {"gflops", flops / 1e9}, {"mfu", nullptr},
                                  {"max_vio", st.max_vio()}, {"aux_loss", st.balance_loss()},
                                  {"dropped", st.dropped},
                                  {"ms_per_step", seconds * 1e3}, {"train_seconds", train_seconds},
                                  {"expert_load", expert_load}};
    if (peak_.gflops > 0) rec["mfu"] = flops / 1e9 / peak_.gflops;
    if (model.config().aux_free_bias && !moe_layers_.empty()) {
      std::vector<MoEStats> stats = st.last_moe;
      model.read_bias_ranges(stats);
      nlohmann::ordered_json bias_range = nlohmann::ordered_json::object();  // per MoE layer: [min, max]
      for (size_t i = 0; i < stats.size(); ++i)
        bias_range[std::to_string(moe_layers_[i])] = {stats[i].bias_min, stats[i].bias_max};
      rec["bias_range"] = bias_range;
    }
    for (const auto& [key, value] : ep.items()) rec[key] = value;
    log_.write(rec);
    char buf[512];
    std::snprintf(buf, sizeof buf,
                  "step %5lld/%lld | loss %.4f (total %.4f) | val %s | lr %.2e | gnorm %.3f | %s tok/s | %.1f GFLOP/s%s "
                  "| maxvio %.2f | aux %.2e | %.0f ms",
                  static_cast<long long>(step), static_cast<long long>(tc_.steps), l.main, l.total,
                  std::isnan(val_loss) ? "  -   " : fixed4(val_loss).c_str(), lr, st.grad_norm,
                  human(tps).c_str(), flops / 1e9,
                  peak_.gflops > 0 ? (" MFU " + std::to_string(std::lround(100.0 * flops / 1e9 / peak_.gflops)) + "%").c_str() : "",
                  st.max_vio(), st.balance_loss(), seconds * 1e3);
    log_.print_line(buf);
  }

  void nonfinite(int64_t step, const StepStats& st, int64_t in_a_row) {
    log_.write(
        {{"step", step}, {"nonfinite", true}, {"loss", std::isfinite(st.losses.total) ? st.losses.total : -1.0}});
    log_.print_line("step " + std::to_string(step) + ": non-finite loss or gradient norm, update skipped (" +
                    std::to_string(in_a_row) + " in a row)");
  }

  void eval(int64_t step, const Evaluation& e, double train_seconds) {
    log_.write({{"step", step}, {"val_loss", e.loss}, {"val_windows", e.windows}, {"train_seconds", train_seconds}});
    char buf[256];
    std::snprintf(buf, sizeof buf, "step %lld | val loss %.4f over %s", static_cast<long long>(step), e.loss,
                  coverage(e).c_str());
    log_.print_line(buf);
  }

  void done(const TrainResult& r, size_t arena_peak) {
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "done: step %lld, train loss %.4f (total %.4f), val loss %.4f, %.1f s, %s tok/s, arena peak %.1f MiB "
                  "-> %s",
                  static_cast<long long>(r.step), r.train_loss_main, r.train_loss, r.val_loss, r.seconds,
                  human(r.tokens_per_second).c_str(), static_cast<double>(arena_peak) / (1 << 20),
                  r.checkpoint.c_str());
    log_.print_line(buf);
  }

 private:
  MetricsLog log_;
  const TrainConfig& tc_;
  const ModelInfo& info_;
  MfuPeak peak_;
  double tokens_per_step_;
  std::vector<int64_t> moe_layers_;
};

// Expert parallelism's metrics of the steps since the last log step, for metrics.jsonl:
//   ep_rows_max_over_mean  per MoE layer: the expert rows the busiest EP rank computed over the
//                          mean (from the step's global loads; 1 = perfectly balanced): the
//                          imbalance EPLB exists for, which sets the pace of every all-to-all
//   ep_nodes_per_token     the mean number of nodes a token's experts live on (node-limited
//                          routing bounds it by model.max_nodes_per_token)
//   ep_bytes_per_step      the all-to-all bytes all ranks sent per step: [intra-node, inter-node]
//                          (the evaluations' forwards in between included)
// Every rank must call record() at the same steps (it sums over the ranks).
class EPMeter {
 public:
  EPMeter(const Processes& p, int64_t ep) : p_(p), ep_(ep) { mark(); }

  nlohmann::ordered_json record(const StepStats& st, const std::vector<int64_t>& moe_layers, int64_t steps) {
    nlohmann::ordered_json rec = nlohmann::ordered_json::object();
    if (!p_.ep) return rec;
    nlohmann::ordered_json rows = nlohmann::ordered_json::object();
    for (size_t i = 0; i < st.loads.size(); ++i) {
      const std::vector<double>& load = st.loads[i];
      const size_t per = load.size() / static_cast<size_t>(ep_);
      double max = 0, sum = 0;
      for (size_t r = 0; r < static_cast<size_t>(ep_); ++r) {
        double rank_rows = 0;
        for (size_t e = r * per; e < (r + 1) * per; ++e) rank_rows += load[e];
        max = std::max(max, rank_rows);
        sum += rank_rows;
      }
      rows[std::to_string(moe_layers[i])] = sum > 0 ? max * static_cast<double>(ep_) / sum : 1.0;
    }
    const dist::EPTraffic t = p_.ep->traffic();
    const dist::CommCounters c = p_.ep_group->counters();
    std::vector<double> v = {static_cast<double>(t.tokens - traffic_.tokens),
                             static_cast<double>(t.token_nodes - traffic_.token_nodes),
                             static_cast<double>(c.bytes[0] - comm_.bytes[0]),
                             static_cast<double>(c.bytes[1] - comm_.bytes[1])};
    p_.dp->sum(v);
    mark();
    const double n = static_cast<double>(std::max<int64_t>(1, steps));
    rec["ep_rows_max_over_mean"] = rows;
    rec["ep_nodes_per_token"] = v[0] > 0 ? v[1] / v[0] : 0.0;
    rec["ep_bytes_per_step"] = {v[2] / n, v[3] / n};
    return rec;
  }

 private:
  void mark() {
    if (!p_.ep) return;
    traffic_ = p_.ep->traffic();
    comm_ = p_.ep_group->counters();
  }
  const Processes& p_;
  int64_t ep_;
  dist::EPTraffic traffic_;
  dist::CommCounters comm_;
};

// "2 processes (mpi, zero 1, link pcie4) x " for the banner; "" on one process.
std::string processes_banner(const Processes& p, const DistConfig& d) {
  if (p.size() == 1) return "";
  std::string s = std::to_string(p.size()) + " processes (" + (p.device ? "nccl" : "mpi") + ", zero " +
                  std::to_string(d.zero) + ", " + std::to_string(p.dp->num_buckets()) + " buckets";
  if (d.link != "none" || d.intra_gbps > 0 || d.inter_gbps > 0) s += ", emulated link " + d.link;
  if (d.ranks_per_node > 0) s += ", " + std::to_string(d.ranks_per_node) + " per node";
  return s + ") x ";
}

// Whether the loop ends after `step`: a stop request (a signal, or the tests' stop_after_step:
// the caller saves and reports stopped) or the time limit (the caller evaluates and saves).
enum class Stop { None, Requested, TimeLimit };

// With several processes every rank must stop after the same step: a signal or the time limit on any
// rank stops them all (one small sum over the ranks).
Stop stop_after(const TrainOptions& options, const TrainConfig& tc, int64_t step, double train_seconds,
                MetricsLog& log, GradSync* sync) {
  std::vector<double> asked = {
      (options.stop && options.stop->load()) || (options.stop_after_step > 0 && step >= options.stop_after_step) ? 1.0
                                                                                                               : 0.0,
      tc.time_limit_s > 0 && train_seconds >= tc.time_limit_s && step < tc.steps ? 1.0 : 0.0};
  if (sync) sync->sum(asked);
  if (asked[0] > 0) {
    log.print_line("stop requested: saving after step " + std::to_string(step));
    return Stop::Requested;
  }
  if (asked[1] > 0) {
    log.print_line("time limit of " + std::to_string(tc.time_limit_s) + " s reached after step " +
                   std::to_string(step));
    return Stop::TimeLimit;
  }
  return Stop::None;
}

}  // namespace

TrainResult train(const RunConfig& cfg_in, const TrainOptions& options) {
  RunConfig cfg = cfg_in;
  cfg.validate();
  const TrainConfig& tc = cfg.train;
  const PrepareSummary data = training_data(cfg);
  const Tokenizer tokenizer = Tokenizer::load(data.tokenizer_path);
  pick_device(cfg.dist, tc.device);
  const Runtime rt = make_runtime(tc.device, tc.precision);

  // Model, the other processes, optimizer and data position, fresh or from the newest checkpoint.
  // With several processes every one loads the checkpoint (checkpoints hold the full state, so the
  // rank count may change across a resume) and rank 0's copy is broadcast; each takes its slice of
  // the global batch and, with ZeRO-1, its shard of the optimizer state.
  // One writer per run directory (the first process writes for all), then its checks.
  const bool leader = dist::world_from_environment().rank == 0;
  std::unique_ptr<RunDirLock> lock = leader ? std::make_unique<RunDirLock>(tc.out_dir) : nullptr;
  Start start = start_or_resume(cfg, rt, options, leader);
  Model& model = *start.model;
  TrainerState& state = start.state;
  const Processes procs = join_processes(cfg.dist, rt.device, model);
  AdamW optimizer(model.params(), AdamWConfig{tc.beta1, tc.beta2, tc.adam_eps, tc.weight_decay},
                  procs.owned());
  Loader loader(loader_config(cfg, data.train_shards, cfg.model.vocab_size, true, procs.world));
  if (!start.resumed_from.empty()) {
    restore_optimizer(start.resumed_from, optimizer);
    if (!state.loader.is_null()) loader.restore(state.loader);
  }
  const LoaderConfig val_cfg = loader_config(cfg, data.val_shards, cfg.model.vocab_size, false, procs.world);

  const int64_t batch = loader.config().batch_size;  // this process's share of train.batch_size
  const ModelInfo info = model_info(model, batch, tc.seq_len, rt.act);
  const MfuPeak peak = mfu_peak(tc, rt, procs.size());
  Arena arena(rt.arena_bytes(info.activation_bytes()), rt.device);
  const Context ctx = rt.context(arena, batch, tc.seq_len);
  const double tokens_per_step = static_cast<double>(tc.batch_size * tc.seq_len * tc.grad_accum_steps);
  RunLog log(tc, options.console, procs.leader(), start.resumed_from.empty() ? -1 : state.step, info, peak,
             tokens_per_step, model.moe_layers());
  log.banner(rt, processes_banner(procs, cfg.dist), start.resumed_from);
  log.metrics().print_line(format_rank_memory(
      rank_memory(model.params().numel_padded(), info.activation_bytes(), procs.size(), cfg.dist.zero,
                  model.params().has_compute_copy(), model.expert_elements(), cfg.dist.ep),
      procs.size(), cfg.dist.zero, cfg.dist.ep));

  TrainResult result;
  result.val_loss = std::numeric_limits<double>::quiet_NaN();
  int64_t nonfinite_in_a_row = state.nonfinite_in_a_row;
  const double resumed_seconds = state.train_seconds;  // earlier runs'
  double train_seconds = 0;  // this run's
  auto save = [&](int64_t step) {
    state.step = step;
    state.loader = loader.state_json();
    state.nonfinite_in_a_row = nonfinite_in_a_row;
    state.train_seconds = resumed_seconds + train_seconds;
    if (procs.dp) {
      procs.dp->complete_params();  // expert parallelism: the other ranks' experts, for a whole checkpoint
      procs.dp->check_identical(model.buffers(), "at step " + std::to_string(step));
    }
    // A sharded optimizer gathers its moments (every process takes part); the first one writes.
    const OptimizerMoments moments{procs.dp ? procs.dp->gather_full(optimizer.m()) : optimizer.m(),
                                   procs.dp ? procs.dp->gather_full(optimizer.v()) : optimizer.v(),
                                   optimizer.steps_taken()};
    if (procs.leader())
      result.checkpoint = save_checkpoint(tc.out_dir, cfg, model, &moments, &tokenizer, state, tc.keep_last);
  };
  auto run_eval = [&](int64_t step) {
    if (data.val_shards.empty()) return;
    const Evaluation e = evaluate(model, cfg, val_cfg, rt, arena, procs.sync());
    result.val_loss = e.loss;
    log.eval(step, e, resumed_seconds + train_seconds);
  };

  const auto t_start = Clock::now();
  const int64_t start_step = state.step;
  int64_t step = start_step, last_logged = start_step;
  EPMeter ep_meter(procs, cfg.dist.ep);
  StepStats st;  // its device buffer lives across the steps
  while (step < tc.steps) {
    const auto t0 = Clock::now();
    const double lr = lr_at(tc, step);
    train_step(model, optimizer, ctx, StepConfig{lr, tc.grad_clip, tc.grad_accum_steps},
               [&] { return rt.upload(loader.next()); }, st, procs.sync());
    ++step;
    nonfinite_in_a_row = st.finite ? 0 : nonfinite_in_a_row + 1;
    if (!st.finite) {  // the step skipped its update; a run of them stops training
      log.nonfinite(step, st, nonfinite_in_a_row);
      MOELAB_CHECK(nonfinite_in_a_row < tc.max_nonfinite, "train: ", nonfinite_in_a_row,
                   " non-finite steps in a row at step ", step,
                   " (lower train.lr, raise warmup_steps, or check the data); the last checkpoint is ",
                   result.checkpoint.empty() ? "none" : result.checkpoint);
    }
    rt.synchronize();  // the step's GPU work is done before it is timed (its verdict already waited)
    const double step_s = seconds_since(t0);
    train_seconds += step_s;
    result.train_loss = st.losses.total;

    if (step % tc.log_every == 0 || step == tc.steps) {
      st.read(model);  // the step's statistics come to the host here, not every step
      result.train_loss_main = st.losses.main;
      log.step(step, lr, st, step_s, resumed_seconds + train_seconds, result.val_loss, model,
               ep_meter.record(st, model.moe_layers(), step - last_logged));
      last_logged = step;
    }
    if (tc.eval_every > 0 && step % tc.eval_every == 0 && step < tc.steps) run_eval(step);
    if (tc.ckpt_every > 0 && step % tc.ckpt_every == 0 && step < tc.steps) save(step);
    log.metrics().progress(step, tc.steps, train_seconds / static_cast<double>(step - start_step));
    const Stop stop = stop_after(options, tc, step, train_seconds, log.metrics(), procs.sync());
    result.stopped = stop == Stop::Requested;
    if (stop != Stop::None) break;
  }
  if (step > start_step && last_logged != step) {  // stopped between log steps
    st.read(model);
    result.train_loss_main = st.losses.main;
  }
  log.metrics().finish_progress();
  if (!result.stopped) run_eval(step);
  save(step);
  result.step = step;
  result.seconds = seconds_since(t_start);
  result.tokens_per_second =
      train_seconds > 0 ? tokens_per_step * static_cast<double>(step - start_step) / train_seconds : 0;
  log.done(result, arena.peak());
  return result;
}

namespace {

// The first batch of `val_cfg` through the model, its logits and losses written to `path`
// (evaluate_checkpoint says the layout).
void dump_first_batch_logits(const std::string& path, const Model& model, const RunConfig& cfg,
                             const LoaderConfig& val_cfg, const Runtime& rt, Arena& arena, const LoadedCheckpoint& ck) {
  Loader val(val_cfg);
  const Context ctx = rt.context(arena, val_cfg.batch_size, cfg.train.seq_len);
  arena.reset();
  const Tensor tokens = val.next();  // [B, W]
  Model::Saved saved;
  model.forward(ctx, rt.upload(tokens), saved);
  const Model::Losses losses = model.read_losses(ctx, saved);
  const Shape btv{val_cfg.batch_size, cfg.train.seq_len, cfg.model.vocab_size};
  auto host_f32 = [&](const Tensor& t) {
    const Tensor h = t.device() == Device::CPU ? t : t.to(Device::CPU);
    return (h.dtype() == DType::F32 ? h : h.to(DType::F32)).reshape(btv);
  };
  auto scalar = [](double v) {
    Tensor t = Tensor::empty({}, DType::F64);
    t.fill(v);
    return t;
  };
  std::vector<std::pair<std::string, Tensor>> out = {
      {"tokens", tokens}, {"logits", host_f32(saved.head.logits)}, {"loss.main", scalar(losses.main)}};
  for (size_t k = 0; k < saved.mtp.size(); ++k) {
    out.emplace_back("mtp." + std::to_string(k + 1) + ".logits", host_f32(saved.mtp[k].head.logits));
    out.emplace_back("loss.mtp." + std::to_string(k + 1), scalar(losses.mtp[k]));
  }
  write_safetensors(path, out, {{"checkpoint", ck.path}, {"step", std::to_string(ck.state.step)},
                                {"runtime", rt.describe()}});
}

}  // namespace

EvalResult evaluate_checkpoint(const std::string& ckpt_or_run_dir, const EvalOptions& options) {
  const auto t0 = Clock::now();
  LoadedCheckpoint ck = load_checkpoint(resolve_checkpoint(ckpt_or_run_dir));
  RunConfig cfg = ck.cfg;
  if (!options.data_dir.empty()) cfg.train.data_dir = options.data_dir;
  if (options.batches >= 0) cfg.train.eval_batches = options.batches;
  const PrepareSummary data = read_prepared(cfg.train.data_dir);
  MOELAB_CHECK(!data.val_shards.empty(), "eval: ", cfg.train.data_dir, " has no validation shards (prepare with "
               "--val-fraction > 0)");
  MOELAB_CHECK(data.vocab_size <= cfg.model.vocab_size, "eval: the data in ", cfg.train.data_dir, " has a vocabulary of ",
               data.vocab_size, " tokens but the checkpoint's model has ", cfg.model.vocab_size);
  const Runtime rt = make_runtime(options.device, options.precision);
  const std::unique_ptr<Model> model = place_model(std::move(ck.model), rt);
  const ModelInfo info = model_info(*model, cfg.train.batch_size, cfg.train.seq_len, rt.act);
  Arena arena(rt.arena_bytes(info.activation_bytes()), rt.device);
  EvalResult r;
  r.checkpoint = ck.path;
  r.runtime = rt.describe();
  r.step = ck.state.step;
  const LoaderConfig val_cfg = loader_config(cfg, data.val_shards, cfg.model.vocab_size, false, dist::WorldInfo{});
  if (!options.dump_logits.empty()) dump_first_batch_logits(options.dump_logits, *model, cfg, val_cfg, rt, arena, ck);
  const Evaluation e = evaluate(*model, cfg, val_cfg, rt, arena);
  r.loss = e.loss;
  r.windows = e.windows;
  r.split_windows = e.split_windows;
  r.seconds = seconds_since(t0);
  return r;
}

}  // namespace moelab
