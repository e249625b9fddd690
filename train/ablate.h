// `moelab ablate`: a grid of training runs -- arms (each a set of `--set` overrides on one base
// config) x seeds, every run trained to the same budget in its own directory -- and a report that
// compares the arms with their seed noise.
//
// A grid file (examples/ablations/*.toml):
//   [grid]
//   base = "../shakespeare_moe.toml"      # relative to the grid file
//   seeds = [1, 2, 3]                     # train.seed of each run
//   steps = 300                           # the budget: exactly one of steps, tokens (trained tokens),
//                                         # seconds (training time) or flops (training FLOPs, counted
//                                         # as moelab info does: equal-FLOPs comparisons)
//   set = ["train.eval_every=100"]        # overrides of every arm (optional)
//   [arm.aux_free]                        # one section per arm, in file order
//   set = ["model.aux_free_bias=true"]
//   [arm.seq_aux]
//   set = ["model.aux_free_bias=false", "model.seq_aux_loss_alpha=1e-4"]
//
// Runs live in OUT/<arm>/seed_<seed>/ (a normal run directory: checkpoints, metrics.jsonl,
// train.log); a run is finished when its `finished.json` is there, so a grid killed and started
// again skips the finished runs and resumes the others from their last checkpoint. The report,
// OUT/REPORT.md and OUT/summary.json (examples/plot_ablation.py draws the curves and heatmaps from
// the runs' metrics), is written from the runs' metrics.jsonl files only.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "train/run_config.h"

namespace moelab {

enum class BudgetKind { Steps, Tokens, Seconds, Flops };
const char* budget_kind_name(BudgetKind k);  // "steps", "tokens", "seconds", "flops"

struct AblationArm {
  std::string name;
  std::vector<std::string> overrides;
};

struct AblationGrid {
  std::string file;                    // the grid file (its folder anchors `base`)
  std::string base;                    // the base config, as a path usable from here
  std::vector<std::string> overrides;  // applied to every arm, before the arm's own
  std::vector<AblationArm> arms;
  std::vector<uint64_t> seeds;
  BudgetKind budget = BudgetKind::Steps;
  double budget_value = 0;
};

// Parses a grid (`name` is only for messages, `dir` anchors a relative base path). Errors name
// the file, the section and the key. read_grid_file also loads every arm's config once, so that a
// bad override fails before any run starts.
AblationGrid parse_grid_toml(const std::string& text, const std::string& name, const std::string& dir);
AblationGrid read_grid_file(const std::string& path);

// One run of the grid: its arm, seed, directory and full config, the budget turned into
// train.steps (steps, tokens, flops) or train.time_limit_s (seconds).
struct AblationRun {
  std::string arm;
  uint64_t seed = 0;
  std::string dir;
  RunConfig cfg;
  std::vector<std::string> overrides;  // what `moelab train --config base` is given, in order
};
std::vector<AblationRun> plan_ablation(const AblationGrid& grid, const std::string& out_dir);

// Welch's unequal-variances t-test of two samples (each of at least two values): the statistic,
// the Welch-Satterthwaite degrees of freedom and the two-sided p-value.
struct WelchTest {
  double t = 0, dof = 0, p = 1;
};
WelchTest welch_t_test(const std::vector<double>& a, const std::vector<double>& b);
// P(|T| > t) for Student's t with dof degrees of freedom.
double student_t_two_sided_p(double t, double dof);

struct AblateOptions {
  std::string grid;           // the grid file
  std::string out_dir;        // default: runs/ablate_<grid file's stem>
  int jobs = 1;               // runs at a time; the cores are split between them
  // OpenMP threads per run; 0: the cores divided by `jobs`. A run's numbers depend on its thread
  // count (the CPU GEMM splits its sums by thread, core/ops/cpu_gemm.h), so a grid trained or
  // resumed in several calls keeps one count: a fixed --threads, or the same --jobs.
  int threads = 0;
  bool report_only = false;   // no training: the report of the finished runs
  std::string moelab;         // the moelab executable that trains each run
  const std::atomic<bool>* stop = nullptr;  // set (by a signal): the running runs save and stop
};
struct AblateResult {
  std::string report;         // REPORT.md's path ("" when stopped before the grid was done)
  int runs = 0, trained = 0, skipped = 0;  // all, trained now, finished before
  int interrupted = 0;        // stopped by `stop`: they resume on the next call
};
AblateResult run_ablation(const AblateOptions& options);

// Reads the finished runs' metrics and writes OUT/REPORT.md and OUT/summary.json. Returns
// REPORT.md's path.
std::string write_ablation_report(const AblationGrid& grid, const std::vector<AblationRun>& runs,
                                  const std::string& out_dir);

}  // namespace moelab
