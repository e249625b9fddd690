#include "train/checkpoint.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/safetensors.h"
#include "core/sha256.h"
#include "train/optimizer.h"

namespace moelab {

namespace fs = std::filesystem;

namespace {

constexpr const char* kStateFile = "trainer_state.json";
constexpr int kFormatVersion = 1;

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

// Flushes a file or directory to disk, so that the rename that publishes a checkpoint never
// overtakes its contents after a crash.
void fsync_path(const fs::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  MOELAB_CHECK(out, p.string(), ": cannot open for writing");
  out << text;
  out.flush();
  MOELAB_CHECK(out, p.string(), ": write failed (disk full?)");
}

std::vector<std::pair<std::string, Tensor>> model_tensors(const Model& model) {
  std::vector<std::pair<std::string, Tensor>> t;
  for (const auto& e : model.params().entries()) t.emplace_back(e.spec.name, model.params().param(e.spec.name));
  for (const auto& e : model.buffers().entries()) t.emplace_back(e.spec.name, model.buffers().param(e.spec.name));
  return t;
}

// Complete checkpoints (no ".tmp" suffix, with a state file), oldest first.
std::vector<fs::path> complete_checkpoints(const std::string& run_dir) {
  std::vector<fs::path> out;
  if (!fs::is_directory(run_dir)) return out;
  for (const auto& entry : fs::directory_iterator(run_dir)) {
    const std::string name = entry.path().filename().string();
    if (entry.is_directory() && name.rfind("step_", 0) == 0 && name.find(".tmp") == std::string::npos &&
        fs::exists(entry.path() / kStateFile))
      out.push_back(entry.path());
  }
  std::sort(out.begin(), out.end());  // fixed-width step numbers sort in step order
  return out;
}

}  // namespace

std::string save_checkpoint(const std::string& run_dir, const RunConfig& cfg, const Model& model,
                            const OptimizerMoments* optimizer, const Tokenizer* tokenizer,
                            const TrainerState& state, int64_t keep_last) {
  fs::create_directories(run_dir);
  const fs::path final_dir = fs::path(run_dir) / step_name(state.step);
  const fs::path tmp = fs::path(run_dir) / (step_name(state.step) + ".tmp");
  fs::remove_all(tmp);  // a leftover of a crash during an earlier save of this step
  fs::create_directories(tmp);

  write_safetensors((tmp / "model.safetensors").string(), model_tensors(model), {{"format", "pt"}});
  if (optimizer) {
    Tensor step = Tensor::empty({}, DType::F64);
    step.fill(static_cast<double>(optimizer->steps));
    const Shape full{model.params().numel_padded()};
    MOELAB_CHECK(optimizer->m.shape() == full && optimizer->v.shape() == full, "save_checkpoint: optimizer moments ",
                 optimizer->m.str(), " are not in the full flat layout ", full.str(), " (gather a sharded optimizer)");
    write_safetensors((tmp / "optimizer.safetensors").string(),
                      {{"m", optimizer->m}, {"v", optimizer->v}, {"step", step}});
  }
  nlohmann::ordered_json j;
  j["format_version"] = kFormatVersion;
  j["step"] = state.step;
  j["seed"] = state.seed;
  j["loader"] = state.loader;
  j["extra"] = state.extra;
  j["config"] = nlohmann::ordered_json::parse(to_json(cfg).dump());
  j["tokenizer"] = tokenizer ? tokenizer->to_json() : nlohmann::ordered_json();
  nlohmann::ordered_json files = nlohmann::ordered_json::object();
  for (const char* f : {"model.safetensors", "optimizer.safetensors"})
    if (fs::exists(tmp / f)) files[f] = fs::file_size(tmp / f);
  j["files"] = files;
  nlohmann::ordered_json sums = nlohmann::ordered_json::object();
  for (const char* f : {"model.safetensors", "optimizer.safetensors"})
    if (fs::exists(tmp / f)) sums[f] = sha256_file((tmp / f).string());
  j["sha256"] = sums;
  for (const char* f : {"model.safetensors", "optimizer.safetensors"})
    if (fs::exists(tmp / f)) fsync_path(tmp / f);
  write_text(tmp / kStateFile, j.dump(1));  // last: its presence marks the contents complete
  fsync_path(tmp / kStateFile);
  fsync_path(tmp);

  fs::remove_all(final_dir);  // an older save of the same step (e.g. a resumed run re-saving)
  fs::rename(tmp, final_dir);
  fsync_path(run_dir);

  if (keep_last > 0) {
    std::vector<fs::path> all = complete_checkpoints(run_dir);
    for (size_t i = 0; i + static_cast<size_t>(keep_last) < all.size(); ++i) fs::remove_all(all[i]);
  }
  return final_dir.string();
}

std::string latest_checkpoint(const std::string& run_dir) {
  const std::vector<fs::path> all = complete_checkpoints(run_dir);
  return all.empty() ? "" : all.back().string();
}

std::string prepare_run_dir(const std::string& run_dir, RunStart how, bool leader) {
  const std::string latest = latest_checkpoint(run_dir);
  const fs::path metrics = fs::path(run_dir) / "metrics.jsonl";
  if (how == RunStart::Resume)
    MOELAB_CHECK(!latest.empty(), "train --resume: ", run_dir, " holds no complete checkpoint to resume (",
                 fs::exists(metrics) ? "only a metrics.jsonl" : "nothing", "); --resume-if-present starts fresh then");
  if ((how == RunStart::Resume || how == RunStart::ResumeIfPresent) && !latest.empty()) return latest;
  if (how == RunStart::Overwrite) {
    if (leader && fs::is_directory(run_dir))
      for (const auto& entry : fs::directory_iterator(run_dir)) {
        const std::string name = entry.path().filename().string();
        if ((entry.is_directory() && name.rfind("step_", 0) == 0) || name == "metrics.jsonl") fs::remove_all(entry.path());
      }
    return "";
  }
  MOELAB_CHECK(latest.empty() && !fs::exists(metrics), "train: ", run_dir, " already holds a run (",
               latest.empty() ? "a metrics.jsonl" : "checkpoint " + fs::path(latest).filename().string(),
               "): pass --resume to continue it, --overwrite to start over (its checkpoints and metrics are "
               "removed), or set another train.out_dir");
  return "";
}

RunDirLock::RunDirLock(const std::string& run_dir) {
  fs::create_directories(run_dir);
  const std::string path = (fs::path(run_dir) / ".lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  MOELAB_CHECK(fd_ >= 0, path, ": cannot open the run's lock file");
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    char pid[32] = {0};
    const ssize_t n = ::pread(fd_, pid, sizeof pid - 1, 0);
    ::close(fd_);
    fd_ = -1;
    MOELAB_FAIL("train: another process (pid ", n > 0 ? std::string(pid, static_cast<size_t>(n)) : std::string("?"),
                ") is writing ", run_dir, " (it holds ", path, "); wait for it or set another train.out_dir");
  }
  const std::string me = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size()))
    MOELAB_FAIL(path, ": cannot write the lock owner's pid");
}

RunDirLock::~RunDirLock() {
  if (fd_ >= 0) ::close(fd_);  // closing releases the flock
}

std::string resolve_checkpoint(const std::string& path) {
  MOELAB_CHECK(fs::is_directory(path), "--ckpt ", path, ": no such directory");
  if (fs::exists(fs::path(path) / "trainer_state.json")) return path;
  const std::string latest = latest_checkpoint(path);
  MOELAB_CHECK(!latest.empty(), "--ckpt ", path,
               ": neither a checkpoint (no trainer_state.json) nor a run directory with a complete checkpoint "
               "(step_*/trainer_state.json)");
  return latest;
}

namespace {
nlohmann::ordered_json read_state(const fs::path& dir) {
  const fs::path p = dir / kStateFile;
  MOELAB_CHECK(fs::exists(p), "checkpoint ", dir.string(), ": no ", kStateFile, " (an incomplete save?)");
  std::ifstream in(p);
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::ordered_json::exception& e) {
    MOELAB_FAIL("checkpoint ", dir.string(), ": ", kStateFile, " is not valid JSON: ", e.what());
  }
  MOELAB_CHECK(j.is_object() && j.value("format_version", 0) == kFormatVersion, "checkpoint ", dir.string(), ": ",
               kStateFile, " has format_version ", j.is_object() ? j.value("format_version", 0) : 0, ", expected ",
               kFormatVersion);
  for (const char* key : {"step", "seed", "config", "files"})
    MOELAB_CHECK(j.contains(key), "checkpoint ", dir.string(), ": ", kStateFile, " lacks '", key, "'");
  for (auto it = j["files"].begin(); it != j["files"].end(); ++it) {
    const fs::path f = dir / it.key();
    // Inference needs only the model and the state: the optimizer's file may be left out (a
    // resume asks for it, restore_optimizer), but when it is there it must be whole.
    if (it.key() == "optimizer.safetensors" && !fs::exists(f)) continue;
    MOELAB_CHECK(fs::exists(f), "checkpoint ", dir.string(), ": ", it.key(), " is missing");
    const auto size = fs::file_size(f);
    MOELAB_CHECK(size == it.value().get<uint64_t>(), "checkpoint ", dir.string(), ": ", it.key(), " has ", size,
                 " bytes, ", kStateFile, " recorded ", it.value().get<uint64_t>(), " (damaged or truncated)");
  }
  return j;
}

// The file's SHA-256 against the one recorded at save (checkpoints from before checksums record
// none: nothing to compare). Returns the digest.
std::string verify_checksum(const fs::path& dir, const nlohmann::ordered_json& state, const std::string& file) {
  const std::string now = sha256_file((dir / file).string());
  if (state.contains("sha256") && state["sha256"].contains(file)) {
    const std::string saved = state["sha256"][file].get<std::string>();
    MOELAB_CHECK(now == saved, "checkpoint ", dir.string(), ": ", file, " does not match the SHA-256 recorded when it "
                 "was saved (", saved.substr(0, 16), "..., now ", now.substr(0, 16), "...): the file was changed or "
                 "damaged");
  }
  return now;
}
}  // namespace

std::vector<std::string> check_checkpoint(const std::string& dir) {
  const nlohmann::ordered_json j = read_state(dir);
  MOELAB_CHECK(j.contains("sha256"), "checkpoint ", dir, ": ", kStateFile, " records no checksums (saved before they "
               "were): its file sizes match");
  std::vector<std::string> lines;
  for (auto it = j["files"].begin(); it != j["files"].end(); ++it) {
    if (!fs::exists(fs::path(dir) / it.key())) {
      lines.push_back(it.key() + ": left out (inference needs only the model)");
      continue;
    }
    verify_checksum(dir, j, it.key());
    lines.push_back(it.key() + ": " + std::to_string(it.value().get<uint64_t>()) + " bytes, SHA-256 as saved");
  }
  return lines;
}

LoadedCheckpoint load_checkpoint(const std::string& dir) {
  const nlohmann::ordered_json j = read_state(dir);
  verify_checksum(dir, j, "model.safetensors");
  LoadedCheckpoint ck;
  ck.path = dir;
  try {
    ck.cfg = run_config_from_json(nlohmann::json::parse(j["config"].dump()));
    ck.cfg.validate();
  } catch (const Error& e) {
    MOELAB_FAIL("checkpoint ", dir, ": its config is invalid: ", e.what());
  }
  const Safetensors st = read_safetensors((fs::path(dir) / "model.safetensors").string());
  auto model = std::make_unique<Model>(ck.cfg.model);
  model->allocate(Device::CPU, DType::F32);
  // Check every tensor before copying any, so a mismatch never leaves a half-loaded model.
  std::vector<std::pair<Tensor, const Tensor*>> copies;
  for (const auto& [name, dst] : model_tensors(*model)) {
    MOELAB_CHECK(st.contains(name), "checkpoint ", dir, ": model.safetensors lacks '", name, "'");
    const Tensor& src = st.at(name);
    MOELAB_CHECK(src.shape() == dst.shape() && src.dtype() == dst.dtype(), "checkpoint ", dir, ": '", name, "' is ",
                 src.str(), ", the config declares ", dst.str());
    copies.emplace_back(dst, &src);
  }
  MOELAB_CHECK(st.tensors.size() == copies.size(), "checkpoint ", dir, ": model.safetensors holds ", st.tensors.size(),
               " tensors, the config declares ", copies.size());
  for (auto& [dst, src] : copies) dst.copy_from(*src);
  ck.model = std::move(model);
  if (!j["tokenizer"].is_null()) ck.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_json(j["tokenizer"], dir + "/" + kStateFile));
  ck.state.step = j["step"].get<int64_t>();
  ck.state.seed = j["seed"].get<uint64_t>();
  ck.state.loader = j.value("loader", nlohmann::ordered_json());
  ck.state.extra = j.value("extra", nlohmann::ordered_json());
  return ck;
}

void restore_optimizer(const std::string& dir, AdamW& optimizer) {
  const fs::path p = fs::path(dir) / "optimizer.safetensors";
  MOELAB_CHECK(fs::exists(p), "checkpoint ", dir, ": no optimizer.safetensors to resume from");
  verify_checksum(dir, read_state(dir), "optimizer.safetensors");
  const Safetensors st = read_safetensors(p.string());
  for (const char* name : {"m", "v", "step"})
    MOELAB_CHECK(st.contains(name), "checkpoint ", dir, ": optimizer.safetensors lacks '", name, "'");
  const Shape full{optimizer.numel_padded()};
  MOELAB_CHECK(st.at("m").shape() == full && st.at("v").shape() == full, "checkpoint ", dir, ": optimizer moments ",
               st.at("m").str(), " do not match the model's flat layout ", full.str());
  optimizer.restore(st.at("m"), st.at("v"), static_cast<int64_t>(st.at("step").data<double>()[0]));
}

}  // namespace moelab
