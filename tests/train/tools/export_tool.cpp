// moelab_export_tool: writes a checkpoint of a random model for tests/train/check_hf_export.py,
// which exports it with `moelab export` and reads the result with the Python `safetensors` package.
//   moelab_export_tool RUN_DIR [--config FILE.toml] [KEY=VALUE ...]
// The model is the default config (or FILE's), with each KEY=VALUE applied as `--set` does
// (model.<key>, train.<key> or a bare key); weights from the Philox init with seed 7, router
// biases random (they start at zero in training, and zeros would hide a mix-up); a char tokenizer
// with <|endoftext|>; saved as step 42. Prints the checkpoint's path. Exit status 1 with the
// error on stderr.
#include <cstdio>
#include <exception>
#include <random>
#include <string>
#include <vector>

#include "train/checkpoint.h"
#include "train/config_file.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: moelab_export_tool RUN_DIR [--config FILE.toml] [KEY=VALUE ...]\n");
    return 2;
  }
  try {
    const std::string run_dir = argv[1];
    std::string config;
    std::vector<std::string> overrides;
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--config" && i + 1 < argc) config = argv[++i];
      else overrides.push_back(a);
    }
    moelab::RunConfig cfg;
    if (!config.empty()) {
      cfg = moelab::load_config(config, overrides);
    } else {
      for (const auto& o : overrides) moelab::apply_override(cfg, o);
      cfg.validate();
    }
    moelab::Model model(cfg.model);
    model.allocate(moelab::Device::CPU);
    model.initialize(7);
    std::mt19937 gen(11);
    std::normal_distribution<float> normal(0.0f, 0.01f);
    for (const auto& e : model.buffers().entries()) {
      moelab::Tensor b = model.buffers().param(e.spec.name);
      for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] = normal(gen);
    }
    const moelab::Tokenizer tok = moelab::Tokenizer::build_char(
        "First Citizen:\nBefore we proceed any further, hear me speak.\n", {moelab::kEndOfText});
    moelab::TrainerState st;
    st.step = 42;
    st.seed = 7;
    std::printf("%s\n", moelab::save_checkpoint(run_dir, cfg, model, nullptr, &tok, st, 0).c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moelab_export_tool: error: %s\n", e.what());
    return 1;
  }
}
