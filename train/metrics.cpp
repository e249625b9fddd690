#include "train/metrics.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "core/check.h"

namespace moelab {

namespace {
// Rewrites `path` without the records of steps after `last_step` and without lines that do not parse
// (the torn last line of a killed writer).
void drop_records_after(const std::string& path, int64_t last_step) {
  std::ifstream in(path);
  if (!in) return;  // nothing logged yet
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    MOELAB_CHECK(out, tmp, ": cannot open for writing");
    for (std::string line; std::getline(in, line);) {
      const nlohmann::json r = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (r.is_discarded() || !r.is_object()) continue;
      if (r.contains("step") && r["step"].is_number_integer() && r["step"].get<int64_t>() > last_step) continue;
      out << line << '\n';
    }
    out.flush();
    MOELAB_CHECK(out, tmp, ": write failed (disk full?)");
  }
  std::filesystem::rename(tmp, path);
}
}  // namespace

MetricsLog::MetricsLog(const std::string& out_dir, bool console, int64_t resumed_step)
    : console_(console), tty_(console && ::isatty(STDOUT_FILENO)) {
  if (out_dir.empty()) return;
  std::filesystem::create_directories(out_dir);
  path_ = (std::filesystem::path(out_dir) / "metrics.jsonl").string();
  if (resumed_step >= 0) drop_records_after(path_, resumed_step);
  out_.open(path_, std::ios::app);
  MOELAB_CHECK(out_, path_, ": cannot open for appending");
}

void MetricsLog::write(nlohmann::ordered_json record) {
  if (path_.empty()) return;
  record["time"] = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  out_ << record.dump() << '\n';
  out_.flush();
  MOELAB_CHECK(out_, path_, ": write failed (disk full?)");
}

void MetricsLog::print_line(const std::string& line) {
  if (!console_) return;
  if (bar_shown_) std::printf("\r\033[K");  // clear the bar, print the line, redraw the bar later
  std::printf("%s\n", line.c_str());
  bar_shown_ = false;
  std::fflush(stdout);
}

void MetricsLog::progress(int64_t step, int64_t total, double seconds_per_step) {
  if (!tty_ || total <= 0) return;
  constexpr int kWidth = 30;
  const double frac = static_cast<double>(step) / static_cast<double>(total);
  const int filled = static_cast<int>(frac * kWidth);
  const double eta = seconds_per_step * static_cast<double>(total - step);
  std::string bar(static_cast<size_t>(filled), '#');
  bar.resize(kWidth, '.');
  std::printf("\r\033[K[%s] %lld/%lld  %3.0f%%  ETA %02d:%02d", bar.c_str(), static_cast<long long>(step),
              static_cast<long long>(total), 100.0 * frac, static_cast<int>(eta) / 60, static_cast<int>(eta) % 60);
  bar_shown_ = true;
  std::fflush(stdout);
}

void MetricsLog::finish_progress() {
  if (bar_shown_) std::printf("\n");
  bar_shown_ = false;
}

}  // namespace moelab
