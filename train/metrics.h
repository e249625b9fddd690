// Training metrics: one console line per log interval (step, loss, val loss, lr, grad norm,
// tokens/s, GFLOP/s and MFU (against a fixed peak: train.peak_tflops or train.hardware; on CUDA
// by default the H100 SXM's bf16 989 TFLOP/s; on the CPU without them none, "mfu": null), MaxVio,
// aux loss, ms/step) under a progress bar with the ETA (drawn only on a terminal), and the same
// record plus the per-layer expert loads (and, with the aux-loss-free bias, each layer's bias
// [min, max] after the step's update) appended to <out_dir>/metrics.jsonl, which examples/plot.py
// turns into PNG plots. Every record carries "time" (Unix seconds, wall clock, when it was
// written); the trainer adds "train_seconds" (training time so far, across resumes) to step and
// validation records, so a curve can be drawn against time as well as steps.
#pragma once

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace moelab {

class MetricsLog {
 public:
  // Appends to <out_dir>/metrics.jsonl. A resumed run (resumed_step >= 0) continues the same file
  // after dropping the records of later steps: what a killed run logged past its last checkpoint,
  // and the resumed run logs again, so the file stays one curve. A line cut short by the kill is
  // dropped too. The kept lines go to a temporary file that is renamed over the old one.
  // out_dir empty: no file (the ranks but the first of a data-parallel run log nothing).
  explicit MetricsLog(const std::string& out_dir, bool console = true, int64_t resumed_step = -1);

  void write(nlohmann::ordered_json record);                 // one JSONL line + "time", flushed
  void print_line(const std::string& line);                   // above the progress bar
  void progress(int64_t step, int64_t total, double seconds_per_step);
  void finish_progress();

 private:
  std::ofstream out_;
  std::string path_;
  bool console_, tty_, bar_shown_ = false;
};

}  // namespace moelab
