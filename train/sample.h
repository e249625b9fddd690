// Text generation (`moelab sample`) with the KV cache of core/nn/decode.cpp (MODEL.md, "What a KV
// cache stores for generation": for MLA only ckv and rope(kr), Ckv + Dr numbers per token per layer).
//   with the cache (default): one decode of the whole prompt (the prefill), then one decode per new
//       token at the next position: each step runs ONE token through the layers, its attention
//       reading the cached positions;
//   without it (use_cache = false): every step re-runs all T tokens of the sequence from position 0,
//       with a fresh cache that is only that call's scratch (about T times the work): the reference
//       the cached path must match token for token.
// Each step turns the last position's logits (those of ids below vocab_limit) into the next token.
// temperature = 0 is greedy (the argmax, ties to the lower id). Otherwise, in this order: logits /
// temperature, top-k (keep the k most likely tokens), top-p (keep the smallest set of the most
// likely tokens whose probability reaches p), renormalise, and draw with Philox's uniform number
// for (seed, step) (core/rng.h): the same seed gives the same tokens, on any machine.
// Context limit: the sequence (prompt + new tokens) never grows past max_position_embeddings, the
// positions the model was built for; generation stops there (SampleStats::context_full) instead of
// sliding the window. The MTP modules are not used.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/nn/model.h"
#include "train/runtime.h"

namespace moelab {

struct SampleOptions {
  int64_t max_new_tokens = 256;
  double temperature = 1.0;  // 0 = greedy
  int64_t top_k = 0;         // 0 = no top-k cut
  double top_p = 1.0;        // 1 = no nucleus cut; must be in (0, 1]
  uint64_t seed = 1337;
  bool use_cache = true;
  // Only ids < vocab_limit are generated (0 = all V): a model's vocabulary may be padded past its
  // tokenizer's (e.g. to a multiple of 64), and those ids have no text.
  int64_t vocab_limit = 0;
};

struct SampleStats {
  int64_t prompt_tokens = 0, new_tokens = 0;
  bool context_full = false;        // stopped at max_position_embeddings before max_new_tokens
  double prefill_seconds = 0;       // the first step (the whole prompt when cached)
  double decode_seconds = 0;        // every later step
  int64_t kv_elements_per_token = 0;  // numbers cached per token, all layers
  DType kv_dtype = DType::F32;      // the cache's dtype (the model's)
  double seconds() const { return prefill_seconds + decode_seconds; }
  double tokens_per_second() const;  // new tokens / seconds()
};

// Throws naming the bad option.
void validate(const SampleOptions& opt);

// The next token from one row of logits [V] and a uniform u in [0, 1) (ignored when greedy).
int32_t sample_token(const std::vector<double>& logits, const SampleOptions& opt, double u);

// The new tokens after `prompt` (ids in [0, V), at least one, at most max_position_embeddings).
// The model runs where its parameters are: on the CPU without a runtime (f32, or f64 in tests);
// elsewhere `rt` (train/runtime.h) gives the device, the activation dtype and the GpuContext.
std::vector<int32_t> generate(const Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              SampleStats* stats = nullptr, const Runtime* rt = nullptr);

// "KV cache: 320 bytes/token (MLA latent Ckv + rope key Dr per layer: (32 + 8) x 4 B (f32) = 160 B,
// x 2 layers); 160 bytes/token in bf16; MHA with these heads would cache 1280 (4.0x)": the line of
// `moelab sample` (no newline).
std::string format_kv_cache(const ModelConfig& cfg, const SampleStats& stats);

}  // namespace moelab
