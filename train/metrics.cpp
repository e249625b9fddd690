#include "train/metrics.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "core/check.h"

namespace moelab {

MetricsLog::MetricsLog(const std::string& out_dir, bool console)
    : console_(console), tty_(console && ::isatty(STDOUT_FILENO)) {
  std::filesystem::create_directories(out_dir);
  path_ = (std::filesystem::path(out_dir) / "metrics.jsonl").string();
  out_.open(path_, std::ios::app);
  MOELAB_CHECK(out_, path_, ": cannot open for appending");
}

void MetricsLog::write(const nlohmann::ordered_json& record) {
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
