// The training loop end to end on a tiny model and a small char corpus written by the test:
// 40 steps straight equal 20 steps, a stop (the SIGINT/SIGTERM path), a resume and 20 more steps,
// bit for bit (weights, optimizer moments, logged losses); the non-finite guard; the schedules;
// damaged checkpoints (truncated, or overwritten with other bytes) are reported and never loaded.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <unistd.h>

#include "data/prepare.h"
#include "tests/harness.h"
#include "train/checkpoint.h"
#include "train/schedule.h"
#include "train/trainer.h"

namespace moelab {
namespace {

namespace fs = std::filesystem;

// A directory private to this process and test: ctest runs tests as parallel processes, and
// two of them clearing the same directory would pull the data from under each other.
std::string scratch(const std::string& name) {
  const std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  const fs::path p = fs::path(::testing::TempDir()) /
                     ("moelab_trainer_" + std::to_string(::getpid()) + "_" + test + "_" + name);
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// A prepared char corpus (a few kB of generated text: no external file needed).
std::string prepared_data() {
  static const std::string dir = [] {
    const std::string d = scratch("data");
    std::ofstream(d + "/corpus.txt") << [] {
      std::string text;
      for (int i = 0; i < 400; ++i) text += "the quick brown fox " + std::to_string(i * 7919 % 1000) + " jumps.\n";
      return text;
    }();
    PrepareOptions opt;
    opt.inputs = {d + "/corpus.txt"};
    opt.out_dir = d + "/prepared";
    opt.kind = TokenizerKind::Char;
    opt.val_fraction = 0.1;
    prepare(opt);
    return opt.out_dir;
  }();
  return dir;
}

RunConfig tiny_run(const std::string& out_dir) {
  RunConfig c;
  c.model.vocab_size = 48;
  c.model.hidden_size = 24;
  c.model.num_hidden_layers = 2;
  c.model.max_position_embeddings = 16;
  c.model.num_attention_heads = 2;
  c.model.kv_lora_rank = 8;
  c.model.qk_nope_head_dim = 6;
  c.model.qk_rope_head_dim = 4;
  c.model.v_head_dim = 6;
  c.model.first_k_dense_replace = 1;
  c.model.n_routed_experts = 4;
  c.model.moe_intermediate_size = 8;
  c.model.num_nextn_predict_layers = 1;
  c.train.batch_size = 3;
  c.train.seq_len = 12;
  c.train.grad_accum_steps = 2;
  c.train.steps = 40;
  c.train.warmup_steps = 5;
  c.train.lr = 3e-3;
  c.train.eval_every = 10;
  c.train.eval_batches = 2;
  c.train.log_every = 5;
  c.train.data_dir = prepared_data();
  c.train.out_dir = out_dir;
  c.train.keep_last = 2;
  return c;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The "loss" of every training record of a metrics.jsonl, by step.
std::map<int64_t, double> logged_losses(const std::string& out_dir) {
  std::map<int64_t, double> out;
  std::ifstream in(out_dir + "/metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss") && !j.contains("nonfinite")) out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

TEST(Trainer, StopAndResumeIsBitExact) {
  TrainOptions quiet;
  quiet.console = false;
  const std::string a = scratch("straight"), b = scratch("resumed");
  const TrainResult straight = train(tiny_run(a), quiet);
  ASSERT_EQ(straight.step, 40);
  EXPECT_LT(straight.train_loss, 3.5) << "the loss must fall from log(48) = 3.87";

  TrainOptions stop = quiet;
  stop.stop_after_step = 20;  // the path a SIGINT/SIGTERM takes: finish the step, save, return
  const TrainResult first = train(tiny_run(b), stop);
  EXPECT_TRUE(first.stopped);
  ASSERT_EQ(first.step, 20);
  ASSERT_EQ(latest_checkpoint(b), first.checkpoint);
  TrainOptions resume = quiet;
  resume.resume = true;
  const TrainResult second = train(tiny_run(b), resume);
  ASSERT_EQ(second.step, 40);

  for (const char* f : {"model.safetensors", "optimizer.safetensors"})
    EXPECT_EQ(read_bytes(a + "/step_00000040/" + f), read_bytes(b + "/step_00000040/" + f)) << f << " differs";
  const auto la = logged_losses(a), lb = logged_losses(b);
  EXPECT_EQ(la.size(), 8u);
  for (const auto& [step, loss] : la) EXPECT_EQ(lb.at(step), loss) << "step " << step;  // exact: same bits
  EXPECT_EQ(straight.val_loss, second.val_loss);
  // keep_last = 2: the checkpoints at steps 20 and 40 remain in the resumed run.
  EXPECT_TRUE(fs::exists(b + "/step_00000020") && fs::exists(b + "/step_00000040"));
}

// 50 steps of the tiny run in `precision` (its own directory): the result and the logged losses.
std::pair<TrainResult, std::map<int64_t, double>> train_50_steps(const std::string& precision) {
  TrainOptions quiet;
  quiet.console = false;
  RunConfig c = tiny_run(scratch("precision_" + precision));
  c.train.steps = 50;
  c.train.precision = precision;
  const TrainResult r = train(c, quiet);
  EXPECT_EQ(r.step, 50);
  return {r, logged_losses(c.train.out_dir)};
}

// `precision` follows fp32 on the same seed and data: every logged loss and the final validation
// loss within `rel` of fp32's, but not fp32's to the last bit (the rounding happened).
void expect_tracks_fp32(const std::string& precision, double rel) {
  SCOPED_TRACE(precision);
  const auto [f32, f32_losses] = train_50_steps("fp32");
  ASSERT_LT(f32.train_loss, 3.0) << "the loss must fall from log(48) = 3.87";
  const auto [low, low_losses] = train_50_steps(precision);
  ASSERT_EQ(low_losses.size(), f32_losses.size());
  bool differs = false;
  double worst = 0;
  for (const auto& [step, loss] : f32_losses) {
    EXPECT_NEAR(low_losses.at(step), loss, rel * loss) << "step " << step;
    worst = std::max(worst, std::abs(low_losses.at(step) - loss) / loss);
    differs = differs || low_losses.at(step) != loss;
  }
  EXPECT_TRUE(differs) << precision << " gave fp32's losses to the last bit: its GEMM operands were not rounded";
  EXPECT_NEAR(low.val_loss, f32.val_loss, rel * f32.val_loss);
  std::printf("%s vs fp32: largest relative gap of a logged loss %.4f%%, val %.5f vs %.5f\n", precision.c_str(),
              100 * worst, low.val_loss, f32.val_loss);
}

// FP8 training (train.precision = fp8 / fp8_pow2: the Linear GEMMs in e4m3, emulated exactly on
// the CPU) within 2% of fp32. The tiny model's widths (24, 8) leave most of each 128-wide tile
// empty, so this checks the plumbing and the stability, not the size of the gap
// (examples/BENCHMARKS.md has that).
TEST(Trainer, Fp8TrainsWithinTwoPercentOfFp32) {
  expect_tracks_fp32("fp8", 0.02);
  expect_tracks_fp32("fp8_pow2", 0.02);
}

// The CPU's bf16 mode (bf16 GEMM operands, f32 sums and activations) within 1% of fp32 (measured:
// 0.02-0.03%).
TEST(Trainer, CpuBf16TracksFp32WithinOnePercent) { expect_tracks_fp32("bf16", 0.01); }

// A run killed after its checkpoint at step 20 had logged steps 21..25 (and a torn line); resuming
// drops them, so metrics.jsonl is one curve again: each step once, in order, with the times that
// make a loss-vs-time plot (time, and train_seconds growing across the resume).
TEST(Trainer, ResumeDropsTheRecordsPastItsCheckpoint) {
  TrainOptions quiet;
  quiet.console = false;
  const std::string dir = scratch("killed");
  RunConfig c = tiny_run(dir);
  c.train.log_every = 1;
  TrainOptions stop = quiet;
  stop.stop_after_step = 20;
  train(c, stop);
  {
    std::ofstream out(dir + "/metrics.jsonl", std::ios::app);
    for (int step = 21; step <= 25; ++step) out << "{\"step\": " << step << ", \"loss\": 99.0}\n";
    out << "{\"step\": 26, \"lo";  // the kill came mid-line
  }
  TrainOptions resume = quiet;
  resume.resume = true;
  train(c, resume);

  std::ifstream in(dir + "/metrics.jsonl");
  int64_t last_step = 0;
  double last_train_seconds = 0;
  std::set<int64_t> train_steps;
  for (std::string line; std::getline(in, line);) {
    const auto r = nlohmann::json::parse(line);  // every line parses: the torn one is gone
    ASSERT_TRUE(r.contains("time")) << line;
    if (!r.contains("loss")) continue;
    const int64_t step = r["step"].get<int64_t>();
    EXPECT_GT(step, last_step) << "step " << step << " logged twice or out of order";
    EXPECT_NE(r["loss"].get<double>(), 99.0) << "a record of the killed run survived: " << line;
    const double t = r["train_seconds"].get<double>();
    EXPECT_GT(t, last_train_seconds) << "train_seconds must grow, across the resume too";
    last_step = step;
    last_train_seconds = t;
    train_steps.insert(step);
  }
  EXPECT_EQ(train_steps.size(), 40u);
}

TEST(Trainer, NonFiniteStepsAreSkippedThenStopTheRun) {
  RunConfig c = tiny_run(scratch("nonfinite"));
  c.train.lr = 1e30;  // the first update destroys the weights; every later loss is non-finite
  c.train.warmup_steps = 0;
  c.train.grad_clip = 0;
  c.train.max_nonfinite = 3;
  TrainOptions quiet;
  quiet.console = false;
  testing::expect_error([&] { train(c, quiet); }, "3 non-finite steps in a row");
  std::ifstream in(c.train.out_dir + "/metrics.jsonl");
  int skipped = 0;
  for (std::string line; std::getline(in, line);) skipped += line.find("\"nonfinite\":true") != std::string::npos;
  EXPECT_EQ(skipped, 3);
}

// A run stopped in the middle of a streak of non-finite steps keeps the streak: resumed, it stops
// at the streak's limit counted across both runs, not after max_nonfinite more.
TEST(Trainer, NonFiniteStreakSurvivesAResume) {
  RunConfig c = tiny_run(scratch("streak"));
  c.train.lr = 1e30;  // step 1 is finite and destroys the weights; steps 2, 3, ... are not
  c.train.warmup_steps = 0;
  c.train.grad_clip = 0;
  c.train.max_nonfinite = 3;
  TrainOptions stop;
  stop.console = false;
  stop.stop_after_step = 3;  // two non-finite steps in a row so far
  EXPECT_EQ(train(c, stop).step, 3);
  EXPECT_EQ(load_checkpoint(latest_checkpoint(c.train.out_dir)).state.nonfinite_in_a_row, 2);
  TrainOptions resume;
  resume.console = false;
  resume.resume = true;
  testing::expect_error([&] { train(c, resume); }, "3 non-finite steps in a row at step 4");
}

// Every field of trainer_state.json comes back as it was saved: step, seed, the loader's position
// and the trainer's extra fields.
TEST(Trainer, TrainerStateRoundTrips) {
  const std::string dir = scratch("state");
  RunConfig c = tiny_run(dir);
  Model model(c.model);
  model.allocate(Device::CPU, DType::F32);
  model.initialize(1);
  TrainerState state;
  state.step = 17;
  state.seed = 0xfeedbeefcafeULL;
  state.loader = {{"epoch", 2}, {"position", 12345}, {"order_seed", 99}};
  state.nonfinite_in_a_row = 2;
  state.train_seconds = 12.5;
  const std::string path = save_checkpoint(dir, c, model, nullptr, nullptr, state, 0);
  const LoadedCheckpoint back = load_checkpoint(path);
  EXPECT_EQ(back.state.step, state.step);
  EXPECT_EQ(back.state.seed, state.seed);
  EXPECT_EQ(back.state.loader, state.loader);
  EXPECT_EQ(back.state.nonfinite_in_a_row, 2);
  EXPECT_EQ(back.state.train_seconds, 12.5);
  EXPECT_TRUE(back.cfg == c);
}

// Every field of trainer_state.json is type-checked on reading: a damaged or hand-edited file is an
// error naming the key, never a JSON library exception (the fuzzer's corpus holds many more).
TEST(Trainer, TrainerStateFieldsAreChecked) {
  const std::string dir = scratch("state_checked");
  RunConfig c = tiny_run(dir);
  Model model(c.model);
  model.allocate(Device::CPU, DType::F32);
  model.initialize(1);
  const std::string path = save_checkpoint(dir, c, model, nullptr, nullptr, TrainerState{}, 0);
  std::ifstream in(fs::path(path) / "trainer_state.json");
  const nlohmann::ordered_json good = nlohmann::ordered_json::parse(in);
  EXPECT_EQ(parse_trainer_state(good.dump(), "ts.json").cfg, c);
  auto with = [&](const std::function<void(nlohmann::ordered_json&)>& edit) {
    nlohmann::ordered_json j = good;
    edit(j);
    return j.dump();
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{\"step\": ", "ts.json is not valid JSON"},
      {"[1, 2]", "ts.json is JSON but not an object"},
      {with([](auto& j) { j["format_version"] = "1"; }), "format_version \"1\", expected 1"},
      {with([](auto& j) { j["step"] = "12"; }), "ts.json: step \"12\", expected an integer >= 0"},
      {with([](auto& j) { j["step"] = -3; }), "ts.json: step -3"},
      {with([](auto& j) { j["seed"] = 1.5; }), "ts.json: seed 1.5"},
      {with([](auto& j) { j.erase("config"); }), "ts.json lacks 'config'"},
      {with([](auto& j) { j["config"]["model"]["hidden_size"] = "wide"; }), "ts.json: its config is invalid"},
      {with([](auto& j) { j["loader"] = 7; }), "loader must be an object or null"},
      {with([](auto& j) { j["extra"]["nonfinite_in_a_row"] = "x"; }), "extra.nonfinite_in_a_row \"x\""},
      {with([](auto& j) { j["extra"]["train_seconds"] = -1; }), "extra.train_seconds -1"},
      {with([](auto& j) { j["files"] = nlohmann::ordered_json::array({1}); }), "files must be an object"},
      {with([](auto& j) { j["files"]["../../etc/passwd"] = 1; }), "files lists '../../etc/passwd'"},
      {with([](auto& j) { j["files"]["model.safetensors"] = "big"; }), "files.model.safetensors = \"big\""},
      {with([](auto& j) { j["files"].erase("model.safetensors"); }), "files lacks model.safetensors"},
      {with([](auto& j) { j["sha256"]["model.safetensors"] = "abc"; }), "expected 64 lowercase hex digits"},
      {with([](auto& j) { j["tokenizer"] = 3; }), "ts.json"},
  };
  for (const auto& [text, fragment] : cases) {
    SCOPED_TRACE(text.substr(0, 60));
    testing::expect_error([&] { parse_trainer_state(text, "ts.json"); }, fragment);
  }
}

// MFU against a fixed peak: train.peak_tflops, else a hardware file's, else (on the CPU) none.
TEST(Trainer, MfuIsAgainstAFixedStatedPeak) {
  auto last_record = [](const std::string& dir) {
    std::ifstream in(dir + "/metrics.jsonl");
    nlohmann::json last;
    for (std::string line; std::getline(in, line);) {
      const auto r = nlohmann::json::parse(line);
      if (r.contains("mfu")) last = r;
    }
    return last;
  };
  TrainOptions quiet;
  quiet.console = false;
  RunConfig c = tiny_run(scratch("none"));
  c.train.steps = 5;
  train(c, quiet);
  EXPECT_TRUE(last_record(c.train.out_dir)["mfu"].is_null()) << "no peak given: no MFU on the CPU";

  c.train.out_dir = scratch("fixed");
  c.train.peak_tflops = 0.5;
  train(c, quiet);
  nlohmann::json r = last_record(c.train.out_dir);
  EXPECT_DOUBLE_EQ(r["mfu"].get<double>(), r["gflops"].get<double>() / 500.0);

  c.train.out_dir = scratch("hardware");
  c.train.peak_tflops = 0;
  c.train.hardware = std::string(MOELAB_SOURCE_DIR) + "/examples/hardware/cpu_this.toml";
  train(c, quiet);
  r = last_record(c.train.out_dir);
  EXPECT_DOUBLE_EQ(r["mfu"].get<double>(), r["gflops"].get<double>() / 106.0);  // its measured fp32 GEMM rate

  c.train.out_dir = scratch("missing");
  c.train.hardware = "no/such/hardware.toml";
  testing::expect_error([&] { train(c, quiet); }, "no/such/hardware.toml: cannot open the hardware file");
}

// The run directory's guards: a fresh run never mixes with an old one, a resume needs something to
// resume, --overwrite starts over, and two writers cannot share a directory.
TEST(Trainer, RunDirectoriesAreGuarded) {
  const std::string dir = scratch("guarded");
  RunConfig c = tiny_run(dir);
  c.train.steps = 4;
  c.train.eval_every = 0;
  TrainOptions quiet;
  quiet.console = false;
  TrainOptions resume = quiet, if_present = quiet, overwrite = quiet;
  resume.resume = true;
  if_present.resume_if_present = true;
  overwrite.overwrite = true;

  testing::expect_error([&] { train(c, resume); }, "holds no complete checkpoint to resume (nothing)");
  EXPECT_EQ(train(c, if_present).step, 4);  // nothing there: a fresh start
  testing::expect_error([&] { train(c, quiet); }, "already holds a run (checkpoint step_00000004): pass --resume");
  c.train.steps = 6;
  EXPECT_EQ(train(c, if_present).step, 6);  // continues from step 4
  TrainOptions both = overwrite;
  both.resume = true;
  testing::expect_error([&] { train(c, both); }, "pass one of them");

  // --overwrite: the old checkpoints and records go, the new run's alone remain.
  c.train.steps = 3;
  EXPECT_EQ(train(c, overwrite).step, 3);
  EXPECT_EQ(latest_checkpoint(dir), dir + "/step_00000003");
  EXPECT_FALSE(fs::exists(dir + "/step_00000006"));
  EXPECT_EQ(logged_losses(dir).rbegin()->first, 3);

  // A run killed before its first checkpoint leaves only metrics.jsonl: still a run.
  const std::string killed = scratch("killed_early");
  fs::create_directories(killed);
  std::ofstream(killed + "/metrics.jsonl") << "{\"step\": 1, \"loss\": 3.0}\n";
  c.train.out_dir = killed;
  testing::expect_error([&] { train(c, quiet); }, "already holds a run (a metrics.jsonl)");
  testing::expect_error([&] { train(c, resume); }, "holds no complete checkpoint to resume (only a metrics.jsonl)");

  // A second writer: this process holds the lock, as a running trainer would.
  c.train.out_dir = scratch("locked");
  RunDirLock holder(c.train.out_dir);
  testing::expect_error([&] { train(c, quiet); },
                        "another process (pid " + std::to_string(::getpid()) + ") is writing " + c.train.out_dir);
}

// Validation covers the whole val split by default: every full batch of its non-overlapping windows
// (W = T + 1 + D_mtp tokens), the same in training and in `moelab eval`; eval_batches takes a prefix.
TEST(Trainer, ValidationCoversTheWholeSplit) {
  RunConfig c = tiny_run(scratch("whole_val"));
  c.train.steps = 3;
  c.train.eval_batches = 0;
  TrainOptions quiet;
  quiet.console = false;
  const TrainResult r = train(c, quiet);
  const int64_t W = c.train.seq_len + 1 + c.model.num_nextn_predict_layers, global = c.train.batch_size;
  const int64_t split = read_prepared(c.train.data_dir).val_tokens / W;  // one val shard
  ASSERT_GT(split / global, 2) << "the test needs a val split of several batches";
  const EvalResult all = evaluate_checkpoint(r.checkpoint, EvalOptions{});
  EXPECT_EQ(all.split_windows, split);
  EXPECT_EQ(all.windows, split / global * global);
  EXPECT_EQ(all.loss, r.val_loss) << "moelab eval and the trainer evaluate the same windows";
  std::ifstream in(c.train.out_dir + "/metrics.jsonl");
  int64_t logged = -1;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("val_windows")) logged = j["val_windows"].get<int64_t>();
  }
  EXPECT_EQ(logged, all.windows);
  EvalOptions two;
  two.batches = 2;
  const EvalResult prefix = evaluate_checkpoint(r.checkpoint, two);
  EXPECT_EQ(prefix.windows, 2 * global);
  EXPECT_NE(prefix.loss, all.loss);
}

TEST(Trainer, DamagedCheckpointIsReportedNotLoaded) {
  const std::string dir = scratch("damaged");
  RunConfig c = tiny_run(dir);
  c.train.steps = 2;
  TrainOptions quiet;
  quiet.console = false;
  const TrainResult r = train(c, quiet);
  const std::string model_file = r.checkpoint + "/model.safetensors";
  fs::resize_file(model_file, fs::file_size(model_file) - 100);
  testing::expect_error([&] { load_checkpoint(r.checkpoint); }, "damaged or truncated");
  // Same size, other bytes: the checksum recorded at save catches it, for the model (load) and the
  // optimizer (resume); `moelab check` names the file.
  RunConfig c3 = tiny_run(scratch("overwritten"));
  c3.train.steps = 2;
  const TrainResult r3 = train(c3, quiet);
  EXPECT_EQ(check_checkpoint(r3.checkpoint).size(), 2u);
  const std::string weights = r3.checkpoint + "/model.safetensors";
  const std::string original = read_bytes(weights);
  {
    std::string zeroed = original;
    std::fill(zeroed.end() - 1000, zeroed.end(), '\0');  // the last tensor's bytes, the header intact
    std::ofstream(weights, std::ios::binary | std::ios::trunc) << zeroed;
  }
  testing::expect_error([&] { load_checkpoint(r3.checkpoint); },
                        "model.safetensors does not match the SHA-256 recorded when it was saved");
  testing::expect_error([&] { check_checkpoint(r3.checkpoint); }, "model.safetensors does not match");
  std::ofstream(weights, std::ios::binary | std::ios::trunc) << original;
  const std::string moments = r3.checkpoint + "/optimizer.safetensors";
  std::string changed = read_bytes(moments);
  changed.back() ^= 1;
  std::ofstream(moments, std::ios::binary | std::ios::trunc) << changed;
  EXPECT_EQ(load_checkpoint(r3.checkpoint).state.step, 2);  // inference does not read the optimizer
  TrainOptions resume3 = quiet;
  resume3.resume = true;
  c3.train.steps = 4;
  testing::expect_error([&] { train(c3, resume3); }, "optimizer.safetensors does not match the SHA-256");
  // Inference needs only the model and the state; a resume asks for the optimizer's file by name.
  RunConfig c2 = tiny_run(scratch("no_optimizer"));
  c2.train.steps = 2;
  const TrainResult r2 = train(c2, quiet);
  fs::remove(r2.checkpoint + "/optimizer.safetensors");
  EXPECT_EQ(load_checkpoint(r2.checkpoint).state.step, 2);
  TrainOptions resume = quiet;
  resume.resume = true;
  RunConfig more = c2;
  more.train.steps = 4;
  testing::expect_error([&] { train(more, resume); }, "no optimizer.safetensors to resume from");
  // A half-written save (a .tmp directory) is never picked for a resume.
  fs::create_directories(dir + "/step_00000099.tmp");
  EXPECT_EQ(latest_checkpoint(dir), r.checkpoint);
}

TEST(Trainer, MissingDataIsAClearError) {
  RunConfig c = tiny_run(scratch("nodata"));
  c.train.data_dir = "/nonexistent/prepared";
  TrainOptions quiet;
  quiet.console = false;
  EXPECT_THROW(train(c, quiet), Error);
}

TEST(Schedule, WarmupCosineAndWsd) {
  TrainConfig t;
  t.lr = 1.0;
  t.min_lr_ratio = 0.1;
  t.steps = 100;
  t.warmup_steps = 10;
  EXPECT_DOUBLE_EQ(lr_at(t, 0), 0.1);
  EXPECT_DOUBLE_EQ(lr_at(t, 9), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(t, 10), 1.0);
  EXPECT_NEAR(lr_at(t, 55), 0.55, 1e-12);  // the middle of the cosine: halfway between 1 and 0.1
  EXPECT_NEAR(lr_at(t, 100), 0.1, 1e-12);
  t.schedule = "wsd";
  t.decay_fraction = 0.2;
  EXPECT_DOUBLE_EQ(lr_at(t, 50), 1.0);  // stable
  EXPECT_DOUBLE_EQ(lr_at(t, 80), 1.0);  // the decay starts at step 80
  EXPECT_NEAR(lr_at(t, 90), 0.55, 1e-12);
  EXPECT_NEAR(lr_at(t, 100), 0.1, 1e-12);
}

}  // namespace
}  // namespace moelab
