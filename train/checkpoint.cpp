#include "train/checkpoint.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

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
  j["extra"] = {{"nonfinite_in_a_row", state.nonfinite_in_a_row}, {"train_seconds", state.train_seconds}};
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

const char* const kFiles[] = {"model.safetensors", "optimizer.safetensors"};

bool is_hex_digest(const nlohmann::ordered_json& v) {
  if (!v.is_string() || v.get_ref<const std::string&>().size() != 64) return false;
  for (char c : v.get_ref<const std::string&>())
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

StateFile parse_trainer_state(const std::string& text, const std::string& where) {
  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::ordered_json::exception& e) {
    MOELAB_FAIL(where, " is not valid JSON: ", e.what());
  }
  MOELAB_CHECK(j.is_object(), where, " is JSON but not an object");
  const nlohmann::ordered_json version = j.value("format_version", nlohmann::ordered_json());
  MOELAB_CHECK(version.is_number_integer() && version.get<int64_t>() == kFormatVersion, where, " has format_version ",
               version.dump(), ", expected ", kFormatVersion);
  auto field = [&](const char* key) -> const nlohmann::ordered_json& {
    MOELAB_CHECK(j.contains(key), where, " lacks '", key, "'");
    return j[key];
  };
  StateFile s;
  const auto& step = field("step");
  MOELAB_CHECK(step.is_number_integer() && step.get<int64_t>() >= 0, where, ": step ", step.dump(),
               ", expected an integer >= 0");
  s.state.step = step.get<int64_t>();
  const auto& seed = field("seed");
  MOELAB_CHECK(seed.is_number_unsigned(), where, ": seed ", seed.dump(), ", expected an integer >= 0");
  s.state.seed = seed.get<uint64_t>();
  s.state.loader = j.value("loader", nlohmann::ordered_json());
  MOELAB_CHECK(s.state.loader.is_null() || s.state.loader.is_object(), where, ": loader must be an object or null");
  // The trainer's counters; checkpoints without them resume with zeros.
  const nlohmann::ordered_json extra = j.value("extra", nlohmann::ordered_json());
  MOELAB_CHECK(extra.is_null() || extra.is_object(), where, ": extra must be an object or null");
  if (extra.is_object()) {
    const auto streak = extra.value("nonfinite_in_a_row", nlohmann::ordered_json(0));
    MOELAB_CHECK(streak.is_number_integer() && streak.get<int64_t>() >= 0, where, ": extra.nonfinite_in_a_row ",
                 streak.dump(), ", expected an integer >= 0");
    s.state.nonfinite_in_a_row = streak.get<int64_t>();
    const auto seconds = extra.value("train_seconds", nlohmann::ordered_json(0.0));
    MOELAB_CHECK(seconds.is_number() && seconds.get<double>() >= 0 && std::isfinite(seconds.get<double>()), where,
                 ": extra.train_seconds ", seconds.dump(), ", expected a number of seconds >= 0");
    s.state.train_seconds = seconds.get<double>();
  }
  try {
    s.cfg = run_config_from_json(nlohmann::json::parse(field("config").dump()));
    s.cfg.validate();
  } catch (const Error& e) {
    MOELAB_FAIL(where, ": its config is invalid: ", e.what());
  }
  const nlohmann::ordered_json tokenizer = j.value("tokenizer", nlohmann::ordered_json());
  if (!tokenizer.is_null()) s.tokenizer = std::make_unique<Tokenizer>(Tokenizer::from_json(tokenizer, where));
  const auto& files = field("files");
  MOELAB_CHECK(files.is_object(), where, ": files must be an object of file name -> bytes");
  for (auto it = files.begin(); it != files.end(); ++it) {
    MOELAB_CHECK(std::find(std::begin(kFiles), std::end(kFiles), it.key()) != std::end(kFiles), where, ": files lists '",
                 it.key(), "', expected model.safetensors and optionally optimizer.safetensors");
    MOELAB_CHECK(it.value().is_number_unsigned(), where, ": files.", it.key(), " = ", it.value().dump(),
                 ", expected a byte count");
    s.files[it.key()] = it.value().get<uint64_t>();
  }
  MOELAB_CHECK(s.files.count("model.safetensors"), where, ": files lacks model.safetensors");
  const nlohmann::ordered_json sums = j.value("sha256", nlohmann::ordered_json::object());
  MOELAB_CHECK(sums.is_object(), where, ": sha256 must be an object of file name -> hex digest");
  for (auto it = sums.begin(); it != sums.end(); ++it) {
    MOELAB_CHECK(s.files.count(it.key()), where, ": sha256 of '", it.key(), "', which files does not list");
    MOELAB_CHECK(is_hex_digest(it.value()), where, ": sha256.", it.key(), " = ", it.value().dump(),
                 ", expected 64 lowercase hex digits");
    s.sha256[it.key()] = it.value().get<std::string>();
  }
  return s;
}

namespace {

StateFile read_state(const fs::path& dir) {
  const fs::path p = dir / kStateFile;
  MOELAB_CHECK(fs::exists(p), "checkpoint ", dir.string(), ": no ", kStateFile, " (an incomplete save?)");
  std::ifstream in(p, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  MOELAB_CHECK(in, p.string(), ": read error");
  StateFile s = parse_trainer_state(text.str(), "checkpoint " + dir.string() + ": " + kStateFile);
  for (const auto& [name, bytes] : s.files) {
    const fs::path f = dir / name;
    // Inference needs only the model and the state: the optimizer's file may be left out (a
    // resume asks for it, restore_optimizer), but when it is there it must be whole.
    if (name == "optimizer.safetensors" && !fs::exists(f)) continue;
    MOELAB_CHECK(fs::exists(f), "checkpoint ", dir.string(), ": ", name, " is missing");
    const auto size = fs::file_size(f);
    MOELAB_CHECK(size == bytes, "checkpoint ", dir.string(), ": ", name, " has ", size, " bytes, ", kStateFile,
                 " recorded ", bytes, " (damaged or truncated)");
  }
  return s;
}

// The file's SHA-256 against the one recorded at save (checkpoints from before checksums record
// none: nothing to compare). Returns the digest.
std::string verify_checksum(const fs::path& dir, const StateFile& state, const std::string& file) {
  const std::string now = sha256_file((dir / file).string());
  if (state.sha256.count(file)) {
    const std::string& saved = state.sha256.at(file);
    MOELAB_CHECK(now == saved, "checkpoint ", dir.string(), ": ", file, " does not match the SHA-256 recorded when it "
                 "was saved (", saved.substr(0, 16), "..., now ", now.substr(0, 16), "...): the file was changed or "
                 "damaged");
  }
  return now;
}
}  // namespace

std::vector<std::string> check_checkpoint(const std::string& dir) {
  const StateFile s = read_state(dir);
  MOELAB_CHECK(!s.sha256.empty(), "checkpoint ", dir, ": ", kStateFile, " records no checksums (saved before they "
               "were): its file sizes match");
  std::vector<std::string> lines;
  for (const auto& [name, bytes] : s.files) {
    if (!fs::exists(fs::path(dir) / name)) {
      lines.push_back(name + ": left out (inference needs only the model)");
      continue;
    }
    MOELAB_CHECK(s.sha256.count(name), "checkpoint ", dir, ": ", kStateFile, " records no SHA-256 of ", name);
    verify_checksum(dir, s, name);
    lines.push_back(name + ": " + std::to_string(bytes) + " bytes, SHA-256 as saved");
  }
  return lines;
}

LoadedCheckpoint load_checkpoint(const std::string& dir) {
  StateFile s = read_state(dir);
  verify_checksum(dir, s, "model.safetensors");
  LoadedCheckpoint ck;
  ck.path = dir;
  ck.cfg = s.cfg;
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
  ck.tokenizer = std::move(s.tokenizer);
  ck.state = s.state;
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
