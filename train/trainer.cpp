#include "train/trainer.h"

#include <omp.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/nn/model.h"
#include "core/ops/grad_norm.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "train/bench.h"
#include "train/checkpoint.h"
#include "train/metrics.h"
#include "train/model_info.h"
#include "train/optimizer.h"
#include "train/runtime.h"
#include "train/schedule.h"

namespace moelab {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

LoaderConfig loader_config(const RunConfig& cfg, const std::vector<std::string>& shards, int64_t vocab, bool train) {
  LoaderConfig lc;
  lc.shards = shards;
  lc.vocab_size = vocab;
  lc.batch_size = cfg.train.batch_size;
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

// Mean main-model loss over the first eval_batches validation windows.
double evaluate(const Model& model, const RunConfig& cfg, const LoaderConfig& val_cfg, const Runtime& rt, Arena& arena) {
  Loader val(val_cfg);
  const Context ctx = rt.context(arena, cfg.train.batch_size, cfg.train.seq_len);
  const int64_t batches = std::min<int64_t>(cfg.train.eval_batches, std::max<int64_t>(1, val.num_windows() / val_cfg.batch_size));
  double sum = 0;
  for (int64_t i = 0; i < batches; ++i) {
    arena.reset();
    Model::Saved saved;
    sum += model.forward(ctx, rt.upload(val.next()), saved).main;
  }
  return sum / static_cast<double>(batches);
}

std::string human(double x) {
  char buf[32];
  if (x >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", x / 1e6);
  else if (x >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", x / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", x);
  return buf;
}

}  // namespace

TrainResult train(const RunConfig& cfg_in, const TrainOptions& options) {
  RunConfig cfg = cfg_in;
  cfg.validate();
  const TrainConfig& tc = cfg.train;
  MOELAB_CHECK(!tc.data_dir.empty(), "train: train.data_dir is empty (run `moelab prepare` and point data_dir at it)");
  const PrepareSummary data = read_prepared(tc.data_dir);
  MOELAB_CHECK(data.vocab_size <= cfg.model.vocab_size, "train: the data in ", tc.data_dir, " has a vocabulary of ",
               data.vocab_size, " tokens but model.vocab_size is ", cfg.model.vocab_size);
  MOELAB_CHECK(!data.train_shards.empty(), "train: ", tc.data_dir, " has no train shards");
  const Tokenizer tokenizer = Tokenizer::load(data.tokenizer_path);

  const Runtime rt = make_runtime(tc.device, tc.precision);
  // Model, optimizer and data, fresh or from the newest checkpoint.
  std::unique_ptr<Model> model;
  TrainerState state;
  state.seed = tc.seed;
  std::string resumed_from;
  if (options.resume) resumed_from = latest_checkpoint(tc.out_dir);
  if (!resumed_from.empty()) {
    LoadedCheckpoint ck = load_checkpoint(resumed_from);
    MOELAB_CHECK(ck.cfg.model == cfg.model, "train --resume: the model config of ", resumed_from,
                 " differs from this run's (resume with the same [model])");
    model = place_model(std::move(ck.model), rt);
    state = ck.state;
  } else {
    model = new_model(cfg.model, tc.seed, rt);
  }
  AdamW optimizer(model->params(), AdamWConfig{tc.beta1, tc.beta2, tc.adam_eps, tc.weight_decay});
  Loader loader(loader_config(cfg, data.train_shards, cfg.model.vocab_size, true));
  if (!resumed_from.empty()) {
    restore_optimizer(resumed_from, optimizer);
    if (!state.loader.is_null()) loader.restore(state.loader);
  }
  const LoaderConfig val_cfg = loader_config(cfg, data.val_shards, cfg.model.vocab_size, false);
  const bool has_val = !data.val_shards.empty();

  MetricsLog log(tc.out_dir, options.console);
  const ModelInfo info = model_info(*model, tc.batch_size, tc.seq_len);
  // MFU's denominator: a GEMM measured here, now (before the arena takes the GPU's free memory).
  const double peak_gflops = measured_gemm_gflops(rt);
  Arena arena(rt.arena_bytes(info.activation_bytes()), rt.device);
  const Context ctx = rt.context(arena, tc.batch_size, tc.seq_len);
  const double tokens_per_step = static_cast<double>(tc.batch_size * tc.seq_len * tc.grad_accum_steps);
  {
    char buf[768];
    std::snprintf(buf, sizeof buf,
                  "moelab train: %lld params (%lld active/token), %.2f MFLOP/token, %s tokens/step, %s, %d threads "
                  "(%s GEMM peak measured: %.0f GFLOP/s), %lld steps%s%s",
                  static_cast<long long>(info.params.total), static_cast<long long>(info.params.active),
                  info.flops_per_token / 1e6, human(tokens_per_step).c_str(), rt.describe().c_str(),
                  omp_get_max_threads(), rt.act == DType::BF16 ? "bf16" : "fp32", peak_gflops,
                  static_cast<long long>(tc.steps), resumed_from.empty() ? "" : ", resumed from ",
                  resumed_from.c_str());
    log.print_line(buf);
  }

  TrainResult result;
  result.val_loss = std::numeric_limits<double>::quiet_NaN();
  const auto t_start = Clock::now();
  double train_seconds = 0;
  int64_t nonfinite_in_a_row = state.extra.is_object() ? state.extra.value("nonfinite_in_a_row", int64_t{0}) : 0;
  auto save = [&](int64_t step) {
    state.step = step;
    state.loader = loader.state_json();
    state.extra = {{"nonfinite_in_a_row", nonfinite_in_a_row}};
    result.checkpoint = save_checkpoint(tc.out_dir, cfg, *model, &optimizer, &tokenizer, state, tc.keep_last);
  };
  auto run_eval = [&](int64_t step) {
    if (!has_val) return;
    result.val_loss = evaluate(*model, cfg, val_cfg, rt, arena);
    log.write({{"step", step}, {"val_loss", result.val_loss}});
    char buf[128];
    std::snprintf(buf, sizeof buf, "step %lld | val loss %.4f", static_cast<long long>(step), result.val_loss);
    log.print_line(buf);
  };

  const int64_t start_step = state.step;
  int64_t step = start_step;
  bool stop = false;
  while (step < tc.steps && !stop) {
    const auto t0 = Clock::now();
    const double lr = lr_at(tc, step);
    model->params().zero_grads();
    Model::Losses sum;
    sum.mtp.assign(static_cast<size_t>(cfg.model.num_nextn_predict_layers), 0.0);
    std::vector<std::vector<double>> loads;
    std::vector<MoEStats> last_stats;
    const double scale = 1.0 / static_cast<double>(tc.grad_accum_steps);
    for (int64_t micro = 0; micro < tc.grad_accum_steps; ++micro) {
      const Tensor tokens = rt.upload(loader.next());
      arena.reset();
      Model::Saved saved;
      const Model::Losses l = model->forward(ctx, tokens, saved);
      model->backward(ctx, saved, scale);
      sum.total += l.total * scale;
      sum.main += l.main * scale;
      for (size_t k = 0; k < l.mtp.size(); ++k) sum.mtp[k] += l.mtp[k] * scale;
      sum.seq_aux += l.seq_aux * scale;
      sum.aux += l.aux * scale;
      sum.z += l.z * scale;
      last_stats = model->moe_stats(saved);
      if (loads.empty()) loads.assign(last_stats.size(), {});
      for (size_t i = 0; i < last_stats.size(); ++i) {
        loads[i].resize(last_stats[i].load.size(), 0.0);
        for (size_t e = 0; e < last_stats[i].load.size(); ++e) loads[i][e] += last_stats[i].load[e];
      }
    }
    const double norm = grad_norm(ctx, {model->params().flat_grads()});
    const bool finite = std::isfinite(sum.total) && std::isfinite(norm);
    if (finite) {
      nonfinite_in_a_row = 0;
      if (tc.grad_clip > 0) clip_grad_norm(ctx, {model->params().flat_grads()}, tc.grad_clip);
      optimizer.step(ctx, lr);
      model->update_bias(ctx, loads);
    } else {
      ++nonfinite_in_a_row;
      log.write({{"step", step + 1}, {"nonfinite", true}, {"loss", std::isfinite(sum.total) ? sum.total : -1.0}});
      log.print_line("step " + std::to_string(step + 1) + ": non-finite loss or gradient norm, update skipped (" +
                     std::to_string(nonfinite_in_a_row) + " in a row)");
      MOELAB_CHECK(nonfinite_in_a_row < tc.max_nonfinite, "train: ", nonfinite_in_a_row,
                   " non-finite steps in a row at step ", step + 1,
                   " (lower train.lr, raise warmup_steps, or check the data); the last checkpoint is ",
                   result.checkpoint.empty() ? "none" : result.checkpoint);
    }
    ++step;
    rt.synchronize();  // the step's GPU work is done before it is timed (the losses above already waited)
    const double step_s = seconds_since(t0);
    train_seconds += step_s;
    result.train_loss = sum.total;

    if (step % tc.log_every == 0 || step == tc.steps) {
      double max_vio = 0;
      nlohmann::ordered_json expert_load = nlohmann::ordered_json::object();
      nlohmann::ordered_json bias_range = nlohmann::ordered_json::object();
      const std::vector<int64_t> layers = model->moe_layers();
      // The biases after this step's update, read here rather than in every forward (on the GPU
      // each read is a small copy to the host).
      model->read_bias_ranges(last_stats);
      for (size_t i = 0; i < last_stats.size(); ++i) {
        max_vio = std::max(max_vio, last_stats[i].max_vio);
        expert_load[std::to_string(layers[i])] = loads[i];
        bias_range[std::to_string(layers[i])] = {last_stats[i].bias_min, last_stats[i].bias_max};
      }
      const double tps = tokens_per_step / step_s, flops = tps * info.flops_per_token;
      nlohmann::ordered_json rec = {{"step", step},        {"loss", sum.total},   {"loss_main", sum.main},
                                    {"loss_mtp", sum.mtp}, {"lr", lr},            {"grad_norm", norm},
                                    {"tokens_per_s", tps}, {"gflops", flops / 1e9},
                                    {"mfu", flops / 1e9 / peak_gflops}, {"max_vio", max_vio},
                                    {"aux_loss", sum.seq_aux + sum.aux + sum.z},
                                    {"ms_per_step", step_s * 1e3}, {"expert_load", expert_load}};
      if (cfg.model.aux_free_bias) rec["bias_range"] = bias_range;  // per MoE layer: [min, max]
      log.write(rec);
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "step %5lld/%lld | loss %.4f (total %.4f) | val %s | lr %.2e | gnorm %.3f | %s tok/s | %.1f GFLOP/s "
                    "MFU %.0f%% | maxvio %.2f | aux %.2e | %.0f ms",
                    static_cast<long long>(step), static_cast<long long>(tc.steps), sum.main, sum.total,
                    std::isnan(result.val_loss) ? "  -   " : std::to_string(result.val_loss).substr(0, 6).c_str(), lr,
                    norm, human(tps).c_str(), flops / 1e9, 100.0 * flops / 1e9 / peak_gflops, max_vio,
                    sum.seq_aux + sum.aux + sum.z, step_s * 1e3);
      log.print_line(buf);
    }
    if (tc.eval_every > 0 && step % tc.eval_every == 0 && step < tc.steps) run_eval(step);
    if (tc.ckpt_every > 0 && step % tc.ckpt_every == 0 && step < tc.steps) save(step);
    log.progress(step, tc.steps, train_seconds / static_cast<double>(step - start_step));

    const bool signalled = options.stop && options.stop->load();
    const bool test_stop = options.stop_after_step > 0 && step >= options.stop_after_step;
    const bool out_of_time = tc.time_limit_s > 0 && train_seconds >= tc.time_limit_s;
    if (signalled || test_stop) {
      result.stopped = true;
      stop = true;
      log.print_line("stop requested: saving after step " + std::to_string(step));
    } else if (out_of_time && step < tc.steps) {
      stop = true;
      log.print_line("time limit of " + std::to_string(tc.time_limit_s) + " s reached after step " + std::to_string(step));
    }
  }
  log.finish_progress();
  if (!result.stopped) run_eval(step);
  save(step);
  result.step = step;
  result.seconds = seconds_since(t_start);
  result.tokens_per_second =
      train_seconds > 0 ? tokens_per_step * static_cast<double>(step - start_step) / train_seconds : 0;
  char buf[256];
  std::snprintf(buf, sizeof buf, "done: step %lld, train loss %.4f, val loss %.4f, %.1f s, %s tok/s, arena peak %.1f MiB -> %s",
                static_cast<long long>(step), result.train_loss, result.val_loss, result.seconds,
                human(result.tokens_per_second).c_str(), static_cast<double>(arena.peak()) / (1 << 20),
                result.checkpoint.c_str());
  log.print_line(buf);
  return result;
}

EvalResult evaluate_checkpoint(const std::string& ckpt_or_run_dir, const EvalOptions& options) {
  const auto t0 = Clock::now();
  LoadedCheckpoint ck = load_checkpoint(resolve_checkpoint(ckpt_or_run_dir));
  RunConfig cfg = ck.cfg;
  if (!options.data_dir.empty()) cfg.train.data_dir = options.data_dir;
  if (options.batches > 0) cfg.train.eval_batches = options.batches;
  const PrepareSummary data = read_prepared(cfg.train.data_dir);
  MOELAB_CHECK(!data.val_shards.empty(), "eval: ", cfg.train.data_dir, " has no validation shards (prepare with "
               "--val-fraction > 0)");
  MOELAB_CHECK(data.vocab_size <= cfg.model.vocab_size, "eval: the data in ", cfg.train.data_dir, " has a vocabulary of ",
               data.vocab_size, " tokens but the checkpoint's model has ", cfg.model.vocab_size);
  const Runtime rt = make_runtime(options.device, options.precision);
  const std::unique_ptr<Model> model = place_model(std::move(ck.model), rt);
  const ModelInfo info = model_info(*model, cfg.train.batch_size, cfg.train.seq_len);
  Arena arena(rt.arena_bytes(info.activation_bytes()), rt.device);
  EvalResult r;
  r.checkpoint = ck.path;
  r.runtime = rt.describe();
  r.step = ck.state.step;
  r.loss = evaluate(*model, cfg, loader_config(cfg, data.val_shards, cfg.model.vocab_size, false), rt, arena);
  r.seconds = seconds_since(t0);
  return r;
}

}  // namespace moelab
