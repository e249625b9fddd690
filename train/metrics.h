// Training metrics: one console line per log interval (step, loss, val loss, lr, grad norm,
// tokens/s, GFLOP/s and MFU (on the CPU against the fp32 GEMM rate measured at start-up), MaxVio,
// aux loss, ms/step) under a progress bar with the ETA (drawn only on a terminal), and the same
// record plus the per-layer expert loads (and, with the aux-loss-free bias, each layer's bias
// [min, max] after the step's update) appended to <out_dir>/metrics.jsonl, which examples/plot.py
// turns into PNG plots.
#pragma once

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace moelab {

class MetricsLog {
 public:
  // Appends to <out_dir>/metrics.jsonl (a resumed run continues the same file).
  explicit MetricsLog(const std::string& out_dir, bool console = true);

  void write(const nlohmann::ordered_json& record);          // one JSONL line, flushed
  void print_line(const std::string& line);                   // above the progress bar
  void progress(int64_t step, int64_t total, double seconds_per_step);
  void finish_progress();

 private:
  std::ofstream out_;
  std::string path_;
  bool console_, tty_, bar_shown_ = false;
};

}  // namespace moelab
