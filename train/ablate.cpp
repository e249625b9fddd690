// `moelab ablate`: the grid's runs as child processes, then the report (train/ablate.h).
#include "train/ablate.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/nn/model.h"
#include "train/config_file.h"
#include "train/model_info.h"

namespace moelab {

namespace fs = std::filesystem;

const char* budget_kind_name(BudgetKind k) {
  switch (k) {
    case BudgetKind::Steps: return "steps";
    case BudgetKind::Tokens: return "tokens";
    case BudgetKind::Seconds: return "seconds";
    case BudgetKind::Flops: return "flops";
  }
  return "?";
}

std::vector<AblationRun> plan_ablation(const AblationGrid& grid, const std::string& out_dir) {
  std::vector<AblationRun> runs;
  for (const AblationArm& arm : grid.arms) {
    for (uint64_t seed : grid.seeds) {
      AblationRun r;
      r.arm = arm.name;
      r.seed = seed;
      r.dir = (fs::path(out_dir) / arm.name / ("seed_" + std::to_string(seed))).string();
      r.overrides = grid.overrides;
      r.overrides.insert(r.overrides.end(), arm.overrides.begin(), arm.overrides.end());
      r.overrides.push_back("train.seed=" + std::to_string(seed));
      r.overrides.push_back("train.out_dir=" + r.dir);
      const RunConfig cfg = load_config(grid.base, r.overrides);
      const double tokens_per_step =
          static_cast<double>(cfg.train.batch_size * cfg.train.seq_len * cfg.train.grad_accum_steps);
      int64_t steps = cfg.train.steps;
      double per_step = 1;  // the budget's unit per step
      switch (grid.budget) {
        case BudgetKind::Steps: steps = static_cast<int64_t>(grid.budget_value); break;
        case BudgetKind::Tokens:
          per_step = tokens_per_step;
          steps = static_cast<int64_t>(std::ceil(grid.budget_value / per_step));
          break;
        case BudgetKind::Flops: {
          // Training FLOPs per token as `moelab info` counts them (6 x active matmul parameters +
          // causal attention), so that arms of different widths get the same compute.
          const Model model(cfg.model);
          per_step = model_info(model, cfg.train.batch_size, cfg.train.seq_len).flops_per_token * tokens_per_step;
          steps = static_cast<int64_t>(std::llround(grid.budget_value / per_step));
          break;
        }
        case BudgetKind::Seconds:
          r.overrides.push_back("train.time_limit_s=" + format_config_number(grid.budget_value));
          break;
      }
      MOELAB_CHECK(steps >= 1, grid.file, ": arm '", arm.name, "': a budget of ", grid.budget_value, " ",
                   budget_kind_name(grid.budget), " is less than one step (", per_step, " ",
                   budget_kind_name(grid.budget), " per step)");
      if (grid.budget != BudgetKind::Seconds) r.overrides.push_back("train.steps=" + std::to_string(steps));
      r.cfg = load_config(grid.base, r.overrides);
      runs.push_back(std::move(r));
    }
  }
  return runs;
}

// ---------------------------------------------------------------------------------------------
// Statistics

namespace {

// The continued fraction of the regularized incomplete beta function (modified Lentz), as in
// Numerical Recipes' betacf; converges quickly for x < (a + 1) / (a + b + 2).
double beta_continued_fraction(double a, double b, double x) {
  const double tiny = 1e-300;
  double c = 1, d = 1 - (a + b) * x / (a + 1);
  if (std::fabs(d) < tiny) d = tiny;
  d = 1 / d;
  double h = d;
  for (int m = 1; m <= 300; ++m) {
    const double m2 = 2.0 * m;
    double aa = m * (b - m) * x / ((a + m2 - 1) * (a + m2));
    d = 1 + aa * d;
    c = 1 + aa / c;
    if (std::fabs(d) < tiny) d = tiny;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    h *= d * c;
    aa = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1));
    d = 1 + aa * d;
    c = 1 + aa / c;
    if (std::fabs(d) < tiny) d = tiny;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1) < 1e-15) break;
  }
  return h;
}

// I_x(a, b).
double incomplete_beta(double a, double b, double x) {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const double front = std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) +
                                b * std::log1p(-x));
  if (x < (a + 1) / (a + b + 2)) return front * beta_continued_fraction(a, b, x) / a;
  return 1 - front * beta_continued_fraction(b, a, 1 - x) / b;
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? std::nan("") : s / static_cast<double>(v.size());
}

// The sample standard deviation (n - 1); 0 for one value.
double stddev(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

}  // namespace

double student_t_two_sided_p(double t, double dof) {
  MOELAB_CHECK(dof > 0, "student_t_two_sided_p: dof ", dof, ", expected > 0");
  if (!std::isfinite(t)) return 0;
  return incomplete_beta(dof / 2, 0.5, dof / (dof + t * t));
}

WelchTest welch_t_test(const std::vector<double>& a, const std::vector<double>& b) {
  MOELAB_CHECK(a.size() >= 2 && b.size() >= 2, "welch_t_test: samples of ", a.size(), " and ", b.size(),
               " values, expected at least 2 each");
  const double va = stddev(a) * stddev(a) / static_cast<double>(a.size());
  const double vb = stddev(b) * stddev(b) / static_cast<double>(b.size());
  WelchTest w;
  const double diff = mean(a) - mean(b);
  if (va + vb == 0) {  // no spread at all: any difference is certain, none is no evidence
    w.t = diff == 0 ? 0 : std::copysign(INFINITY, diff);
    w.dof = static_cast<double>(a.size() + b.size() - 2);
    w.p = diff == 0 ? 1 : 0;
    return w;
  }
  w.t = diff / std::sqrt(va + vb);
  w.dof = (va + vb) * (va + vb) /
          (va * va / static_cast<double>(a.size() - 1) + vb * vb / static_cast<double>(b.size() - 1));
  w.p = student_t_two_sided_p(w.t, w.dof);
  return w;
}

// ---------------------------------------------------------------------------------------------
// The report

namespace {

constexpr const char* kFinished = "finished.json";

// What a run's metrics.jsonl says, reduced to the report's numbers.
struct RunMetrics {
  double val_loss = std::nan("");
  double tokens_per_s = std::nan(""), max_vio = std::nan("");
  double train_seconds = std::nan("");
  int64_t steps = 0, val_windows = 0, dropped = 0;
};

RunMetrics read_run_metrics(const std::string& dir) {
  const fs::path path = fs::path(dir) / "metrics.jsonl";
  std::ifstream in(path);
  MOELAB_CHECK(in, path.string(), ": cannot open (did the run start?)");
  RunMetrics m;
  std::vector<double> tps, vio;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    nlohmann::json r;
    try {
      r = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      MOELAB_FAIL(path.string(), ":", line_no, ": not a JSON record: ", e.what());
    }
    if (!r.is_object() || !r.contains("step") || !r["step"].is_number_integer()) continue;
    m.steps = std::max(m.steps, r["step"].get<int64_t>());
    if (r.contains("val_loss") && r["val_loss"].is_number()) {
      m.val_loss = r["val_loss"].get<double>();
      m.val_windows = r.value("val_windows", int64_t{0});
    }
    if (r.contains("train_seconds") && r["train_seconds"].is_number()) m.train_seconds = r["train_seconds"].get<double>();
    if (r.contains("tokens_per_s") && r["tokens_per_s"].is_number()) tps.push_back(r["tokens_per_s"].get<double>());
    if (r.contains("max_vio") && r["max_vio"].is_number()) vio.push_back(r["max_vio"].get<double>());
    if (r.contains("dropped") && r["dropped"].is_number_integer()) m.dropped += r["dropped"].get<int64_t>();
  }
  MOELAB_CHECK(std::isfinite(m.val_loss), path.string(), ": no validation record (the run did not finish?)");
  // Throughput and balance of the run's second half: the first records include start-up and the
  // router's early imbalance, which every arm has.
  auto tail_mean = [](const std::vector<double>& v) {
    return mean(std::vector<double>(v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end()));
  };
  if (!tps.empty()) m.tokens_per_s = tail_mean(tps);
  if (!vio.empty()) m.max_vio = tail_mean(vio);
  return m;
}

std::string fmt(const char* f, double v) {
  if (!std::isfinite(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string human_count(double x) {
  char buf[32];
  if (x >= 1e12) std::snprintf(buf, sizeof buf, "%.2fT", x / 1e12);
  else if (x >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", x / 1e9);
  else if (x >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", x / 1e6);
  else if (x >= 1e3) std::snprintf(buf, sizeof buf, "%.1fk", x / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", x);
  return buf;
}

}  // namespace

std::string write_ablation_report(const AblationGrid& grid, const std::vector<AblationRun>& runs,
                                  const std::string& out_dir) {
  struct ArmSummary {
    std::string name;
    std::vector<std::string> overrides;
    std::vector<double> val, tps, vio, seconds;
    int64_t steps = 0, dropped = 0;
    ModelInfo info;
    int64_t kv_bytes = 0;  // the KV cache per token, all trunk layers, bf16
  };
  std::vector<ArmSummary> arms;
  nlohmann::ordered_json summary_runs = nlohmann::ordered_json::array();
  for (const AblationArm& arm : grid.arms) {
    ArmSummary a;
    a.name = arm.name;
    a.overrides = arm.overrides;
    for (const AblationRun& r : runs) {
      if (r.arm != arm.name) continue;
      const RunMetrics m = read_run_metrics(r.dir);
      a.val.push_back(m.val_loss);
      if (std::isfinite(m.tokens_per_s)) a.tps.push_back(m.tokens_per_s);
      if (std::isfinite(m.max_vio)) a.vio.push_back(m.max_vio);
      if (std::isfinite(m.train_seconds)) a.seconds.push_back(m.train_seconds);
      a.steps = std::max(a.steps, m.steps);
      a.dropped += m.dropped;
      const Model model(r.cfg.model);
      a.info = model_info(model, r.cfg.train.batch_size, r.cfg.train.seq_len);
      a.kv_bytes = a.info.kv_bytes * r.cfg.model.num_hidden_layers;
      summary_runs.push_back({{"arm", r.arm}, {"seed", r.seed}, {"dir", r.dir}, {"steps", m.steps},
                              {"val_loss", m.val_loss}, {"val_windows", m.val_windows},
                              {"tokens_per_s", m.tokens_per_s}, {"max_vio", m.max_vio},
                              {"train_seconds", m.train_seconds}, {"dropped", m.dropped}});
    }
    arms.push_back(std::move(a));
  }

  std::ostringstream md;
  md << "# Ablation: " << fs::path(grid.file).stem().string() << "\n\n";
  md << "Grid `" << grid.file << "` on `" << grid.base << "`: " << grid.arms.size() << " arm(s) x "
     << grid.seeds.size() << " seed(s), budget " << fmt("%g", grid.budget_value) << " "
     << budget_kind_name(grid.budget) << " per run";
  if (!grid.overrides.empty()) {
    md << "; every arm with";
    for (const auto& o : grid.overrides) md << " `" << o << "`";
  }
  md << ".\n\nVal loss: the main model's loss over the whole val split at the end of each run (mean ± "
        "sample std over the seeds). tokens/s and MaxVio: the mean over the second half of each run's "
        "log records (MaxVio = (max load - mean load) / mean load of the worst MoE layer). Params and "
        "FLOPs/token as `moelab info` counts them; KV cache in bf16 per token, all layers; dropped: the "
        "expert assignments the capacity factor dropped, summed over the logged steps of every seed.\n\n";
  md << "| arm | overrides | val loss | steps | tokens/s | MaxVio | active params | FLOPs/token | KV B/token | "
        "dropped |\n";
  md << "|---|---|---|---|---|---|---|---|---|---|\n";
  for (const ArmSummary& a : arms) {
    std::string ov;
    for (const auto& o : a.overrides) ov += (ov.empty() ? "`" : ", `") + o + "`";
    md << "| " << a.name << " | " << (ov.empty() ? "(base)" : ov) << " | " << fmt("%.4f", mean(a.val)) << " ± "
       << fmt("%.4f", stddev(a.val)) << " | " << a.steps << " | " << fmt("%.0f", mean(a.tps)) << " | "
       << fmt("%.3f", mean(a.vio)) << " | " << human_count(static_cast<double>(a.info.params.active)) << " | "
       << human_count(a.info.flops_per_token) << " | " << a.kv_bytes << " | " << a.dropped
       << " |\n";
  }
  md << "\n## Pairs\n\nWelch's t-test on the final val losses (unequal variances; two-sided p). A difference "
        "counts as beyond the seed noise when p < 0.05; with few seeds only large, consistent "
        "differences do.\n\n";
  md << "| arm A | arm B | mean A - mean B | t | dof | p | beyond the noise? |\n|---|---|---|---|---|---|---|\n";
  nlohmann::ordered_json pairs = nlohmann::ordered_json::array();
  for (size_t i = 0; i < arms.size(); ++i)
    for (size_t j = i + 1; j < arms.size(); ++j) {
      const ArmSummary &a = arms[i], &b = arms[j];
      md << "| " << a.name << " | " << b.name << " | " << fmt("%+.4f", mean(a.val) - mean(b.val)) << " | ";
      if (a.val.size() < 2 || b.val.size() < 2) {
        md << "- | - | - | needs 2 seeds per arm |\n";
        continue;
      }
      const WelchTest w = welch_t_test(a.val, b.val);
      md << fmt("%.2f", w.t) << " | " << fmt("%.1f", w.dof) << " | " << fmt("%.3g", w.p) << " | "
         << (w.p < 0.05 ? "yes" : "no") << " |\n";
      pairs.push_back({{"a", a.name}, {"b", b.name}, {"diff", mean(a.val) - mean(b.val)}, {"t", w.t},
                       {"dof", w.dof}, {"p", w.p}});
    }
  md << "\nRuns: `" << out_dir << "/<arm>/seed_<seed>/` (metrics.jsonl, train.log, the last checkpoint); "
        "curves and expert-load heatmaps: `python3 examples/plot_ablation.py " << out_dir << "`.\n";

  const std::string report = (fs::path(out_dir) / "REPORT.md").string();
  {
    std::ofstream out(report);
    MOELAB_CHECK(out, report, ": cannot open for writing");
    out << md.str();
    MOELAB_CHECK(out, report, ": write failed");
  }
  nlohmann::ordered_json summary = {{"grid", grid.file}, {"base", grid.base},
                                    {"budget", {{budget_kind_name(grid.budget), grid.budget_value}}},
                                    {"seeds", grid.seeds}, {"runs", summary_runs}, {"pairs", pairs}};
  nlohmann::ordered_json arm_list = nlohmann::ordered_json::array();
  for (const ArmSummary& a : arms)
    arm_list.push_back({{"name", a.name}, {"overrides", a.overrides}, {"val_loss_mean", mean(a.val)},
                        {"val_loss_std", stddev(a.val)}, {"active_params", a.info.params.active},
                        {"flops_per_token", a.info.flops_per_token},
                        {"kv_bytes_per_token", a.kv_bytes}});
  summary["arms"] = arm_list;
  std::ofstream(fs::path(out_dir) / "summary.json") << summary.dump(1) << "\n";
  return report;
}

// ---------------------------------------------------------------------------------------------
// The runner

namespace {

using Clock = std::chrono::steady_clock;

// The newest step a run has logged (0 before its first record): the progress line's input.
int64_t logged_step(const std::string& dir) {
  std::ifstream in(fs::path(dir) / "metrics.jsonl");
  std::string line, last;
  while (std::getline(in, line))
    if (!line.empty()) last = line;
  if (last.empty()) return 0;
  try {
    const nlohmann::json r = nlohmann::json::parse(last);
    return r.value("step", int64_t{0});
  } catch (const nlohmann::json::exception&) {
    return 0;  // a record being written
  }
}

// Starts `moelab train` for one run, its output to <dir>/train.log, with `threads` OpenMP threads.
// The child gets SIGTERM if the grid dies (it then saves a checkpoint and exits, so that the next
// `moelab ablate` resumes it).
pid_t start_run(const AblateOptions& o, const AblationGrid& grid, const AblationRun& r, int threads) {
  fs::create_directories(r.dir);
  std::vector<std::string> args = {o.moelab, "train", "--config", grid.base, "--resume-if-present"};
  for (const std::string& s : r.overrides) {
    args.push_back("--set");
    args.push_back(s);
  }
  const std::string log = (fs::path(r.dir) / "train.log").string();
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  MOELAB_CHECK(pid >= 0, "ablate: fork failed for run ", r.dir);
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(1);  // the grid already died
    FILE* f = std::fopen(log.c_str(), "a");
    if (!f) ::_exit(127);
    ::dup2(fileno(f), 1);
    ::dup2(fileno(f), 2);
    ::setenv("OMP_NUM_THREADS", std::to_string(threads).c_str(), 1);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    ::execv(o.moelab.c_str(), argv.data());
    std::fprintf(stderr, "ablate: cannot run %s\n", o.moelab.c_str());
    ::_exit(127);
  }
  return pid;
}

std::string duration(double s) {
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%.0fh%02.0fm", std::floor(s / 3600), std::fmod(s, 3600) / 60);
  else if (s >= 60) std::snprintf(buf, sizeof buf, "%.0fm%02.0fs", std::floor(s / 60), std::fmod(s, 60));
  else std::snprintf(buf, sizeof buf, "%.0fs", s);
  return buf;
}

}  // namespace

AblateResult run_ablation(const AblateOptions& o) {
  MOELAB_CHECK(o.jobs >= 1, "ablate: --jobs ", o.jobs, ", expected >= 1");
  const AblationGrid grid = read_grid_file(o.grid);
  const std::string out = o.out_dir.empty() ? "runs/ablate_" + fs::path(o.grid).stem().string() : o.out_dir;
  const std::vector<AblationRun> runs = plan_ablation(grid, out);
  fs::create_directories(out);
  AblateResult result;
  result.runs = static_cast<int>(runs.size());

  std::vector<size_t> todo;
  for (size_t i = 0; i < runs.size(); ++i) {
    if (fs::exists(fs::path(runs[i].dir) / kFinished)) ++result.skipped;
    else todo.push_back(i);
  }
  if (o.report_only) {
    MOELAB_CHECK(todo.empty(), "ablate --report-only: ", todo.size(), " of the ", runs.size(), " runs are not finished "
                 "(the first: ", runs[todo.front()].dir, ")");
  } else if (!todo.empty()) {
    const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    const int jobs = std::min<int>(o.jobs, static_cast<int>(todo.size()));
    // From --jobs, not from the runs left: a grid resumed with one run to go trains it as before.
    const int threads = o.threads > 0 ? o.threads : std::max(1, cores / o.jobs);
    std::printf("ablate: %zu runs (%d finished before), %d at a time with %d thread(s) each, into %s\n", runs.size(),
                result.skipped, jobs, threads, out.c_str());
    std::fflush(stdout);
    const auto t0 = Clock::now();
    const bool tty = ::isatty(::fileno(stdout)) != 0;
    double last_line = -1e9;  // seconds since t0 of the last progress line
    std::map<pid_t, size_t> running;
    size_t next = 0;
    int failed = 0;
    std::string first_failure;
    auto steps_of = [&](const AblationRun& r) { return std::max<int64_t>(1, r.cfg.train.steps); };
    bool stopping = false;
    while ((next < todo.size() && !stopping) || !running.empty()) {
      if (!stopping && o.stop && o.stop->load()) {
        // Ctrl-C or SIGTERM: each running trainer finishes its step and saves (a terminal's Ctrl-C
        // reached them already; SIGTERM again is harmless), none is marked finished.
        stopping = true;
        for (const auto& [p, i] : running) ::kill(p, SIGTERM);
        std::printf("\nablate: stopping: %zu running run(s) save a checkpoint and exit\n", running.size());
      }
      while (!stopping && next < todo.size() && static_cast<int>(running.size()) < jobs) {
        const size_t i = todo[next++];
        running[start_run(o, grid, runs[i], threads)] = i;
      }
      int status = 0;
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid > 0 && running.count(pid)) {
        const AblationRun& r = runs[running[pid]];
        running.erase(pid);
        if (stopping) {
          ++result.interrupted;
        } else if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
          std::ofstream(fs::path(r.dir) / kFinished)
              << nlohmann::json({{"arm", r.arm}, {"seed", r.seed}, {"steps", logged_step(r.dir)}}).dump() << "\n";
          ++result.trained;
        } else {
          ++failed;
          if (first_failure.empty()) first_failure = (fs::path(r.dir) / "train.log").string();
          std::printf("ablate: run %s/seed_%llu failed (%s); its log: %s/train.log\n", r.arm.c_str(),
                      static_cast<unsigned long long>(r.seed),
                      WIFEXITED(status) ? ("exit " + std::to_string(WEXITSTATUS(status))).c_str() : "killed",
                      r.dir.c_str());
        }
        continue;
      }
      // Progress of the whole grid: finished runs count whole, running ones by their logged step.
      double done = result.skipped + result.trained + failed;
      std::string now;
      for (const auto& [p, i] : running) {
        const int64_t s = logged_step(runs[i].dir);
        done += std::min(1.0, static_cast<double>(s) / static_cast<double>(steps_of(runs[i])));
        now += " " + runs[i].arm + "/" + std::to_string(runs[i].seed) + "@" + std::to_string(s);
      }
      const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
      const double fresh = done - result.skipped;
      const double eta = fresh > 0.01 ? elapsed * (static_cast<double>(runs.size()) - done) / fresh : NAN;
      // A terminal gets one line rewritten in place; a log file a line per minute.
      if (tty || elapsed - last_line >= 60) {
        std::printf("%sablate: %.1f of %zu runs, %s elapsed, ETA %s; running%s%s", tty ? "\r" : "", done, runs.size(),
                    duration(elapsed).c_str(), std::isfinite(eta) ? duration(eta).c_str() : "?", now.c_str(),
                    tty ? "    " : "\n");
        std::fflush(stdout);
        last_line = elapsed;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    if (tty) std::printf("\n");
    if (stopping) return result;  // no report: the grid is not done
    MOELAB_CHECK(failed == 0, "ablate: ", failed, " run(s) failed (the first's log: ", first_failure,
                 "); run the same command again to retry them (finished runs are kept)");
  }
  result.report = write_ablation_report(grid, runs, out);
  return result;
}

}  // namespace moelab
