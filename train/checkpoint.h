// Checkpoints (DESIGN.md): one directory per save,
//   <run>/step_00001200/
//     model.safetensors       every parameter and non-gradient buffer by its Hugging Face name (f32)
//     optimizer.safetensors   AdamW's m and v (flat, the parameter buffer's layout) and its step
//     trainer_state.json      step, RNG seed, data-loader state, the full config (model + train),
//                             the tokenizer (its tokenizer.json inline), and a file list with sizes
// A save writes everything into "<name>.tmp", fsyncs, then renames the directory into place, so
// a directory without ".tmp" is complete; trainer_state.json is written last and lists every file
// with its byte size and SHA-256, and loading checks them before touching the model: a damaged
// checkpoint (truncated, or overwritten with other bytes) is reported, never loaded half-way. Older complete checkpoints beyond keep_last are removed.
#pragma once

#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/nn/model.h"
#include "data/tokenizer.h"
#include "train/run_config.h"

namespace moelab {

class AdamW;

struct TrainerState {
  int64_t step = 0;                   // optimizer steps taken
  uint64_t seed = 0;
  nlohmann::ordered_json loader;      // data/loader.h state_json(), or null
  int64_t nonfinite_in_a_row = 0;     // the trainer's streak of skipped non-finite steps
  double train_seconds = 0;           // training time of every run up to this step
};

// The optimizer's state as a checkpoint holds it: AdamW's moments in the parameters' full flat layout
// [numel_padded] (a sharded optimizer gathers them first, so checkpoints do not depend on the rank
// count) and the number of updates taken.
struct OptimizerMoments {
  Tensor m, v;
  int64_t steps = 0;
};

// Writes <run_dir>/step_<step, 8 digits> atomically and prunes older complete checkpoints beyond
// keep_last (0 keeps all). Returns the checkpoint's path.
std::string save_checkpoint(const std::string& run_dir, const RunConfig& cfg, const Model& model,
                            const OptimizerMoments* optimizer, const Tokenizer* tokenizer,
                            const TrainerState& state, int64_t keep_last);

// The newest complete checkpoint under run_dir ("" when there is none).
std::string latest_checkpoint(const std::string& run_dir);

// How a training run treats its directory (`moelab train` flags), so that no run is mixed with
// another or lost silently:
//   Fresh            run_dir must not hold a run (a complete checkpoint or metrics.jsonl)
//   Resume           run_dir must hold a checkpoint, the newest of which is returned
//   ResumeIfPresent  Resume when there is a checkpoint, else Fresh
//   Overwrite        the old run's checkpoints (complete or not) and metrics.jsonl are removed first
// Errors name the directory, what it holds and the flag that would proceed. Returns the checkpoint
// to resume from ("" = a fresh start). Only `leader` removes anything (one process of several).
enum class RunStart { Fresh, Resume, ResumeIfPresent, Overwrite };
std::string prepare_run_dir(const std::string& run_dir, RunStart how, bool leader);

// One writer per run directory: an exclusive lock on <run_dir>/.lock for the lifetime of the object
// (flock: the kernel releases it when the process ends, also on kill -9). Throws, naming the
// directory and the pid that holds it, when another process does.
class RunDirLock {
 public:
  explicit RunDirLock(const std::string& run_dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;

 private:
  int fd_ = -1;
};
// What a `--ckpt` argument names: a checkpoint directory, or a run directory (its newest complete
// checkpoint). Throws naming the path when it is neither.
std::string resolve_checkpoint(const std::string& ckpt_or_run_dir);

// trainer_state.json as read back: every field type-checked, so that a damaged or hand-edited
// file is an error naming `where` and the key, never a JSON library exception or a wrong value.
struct StateFile {
  TrainerState state;
  RunConfig cfg;                                // validated
  std::unique_ptr<Tokenizer> tokenizer;         // null when the run had none
  std::map<std::string, uint64_t> files;        // model.safetensors / optimizer.safetensors -> bytes
  std::map<std::string, std::string> sha256;    // the same -> hex digest (none before checksums)
};
StateFile parse_trainer_state(const std::string& text, const std::string& where);

struct LoadedCheckpoint {
  std::string path;
  RunConfig cfg;
  std::unique_ptr<Model> model;       // allocated on the CPU in f32, weights and buffers loaded
  std::unique_ptr<Tokenizer> tokenizer;  // null when the run had none
  TrainerState state;
};

// Validates the whole directory (file list, sizes, tensor names/shapes/dtypes against the model
// the config declares) and loads it. Errors name the checkpoint, the file and the problem.
LoadedCheckpoint load_checkpoint(const std::string& dir);
// Loads the AdamW moments of a checkpoint into an optimizer built for its model (a sharded one
// keeps its ranges).
void restore_optimizer(const std::string& dir, AdamW& optimizer);

// `moelab check`: every file of a checkpoint against the size and the SHA-256 recorded when it was
// saved (loading verifies the files it reads the same way). One line per file; throws naming the
// checkpoint and the file that differs.
std::vector<std::string> check_checkpoint(const std::string& dir);

}  // namespace moelab
