// Text generation: sampling (temperature, top-k, top-p), the generation loop with and without the
// KV cache, and the KV-cache report; see sample.h.
#include "train/sample.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/rng.h"

namespace moelab {

double SampleStats::tokens_per_second() const {
  return seconds() > 0 ? static_cast<double>(new_tokens) / seconds() : 0.0;
}

void validate(const SampleOptions& opt) {
  MOELAB_CHECK(opt.max_new_tokens >= 0, "sample: max_new_tokens is ", opt.max_new_tokens, ", expected >= 0");
  MOELAB_CHECK(std::isfinite(opt.temperature) && opt.temperature >= 0, "sample: temperature is ", opt.temperature,
               ", expected a finite value >= 0 (0 = greedy)");
  MOELAB_CHECK(opt.top_k >= 0, "sample: top_k is ", opt.top_k, ", expected >= 0 (0 = off)");
  MOELAB_CHECK(opt.top_p > 0 && opt.top_p <= 1, "sample: top_p is ", opt.top_p, ", expected a value in (0, 1] (1 = off)");
  MOELAB_CHECK(opt.vocab_limit >= 0, "sample: vocab_limit is ", opt.vocab_limit, ", expected >= 0 (0 = all)");
}

int32_t sample_token(const std::vector<double>& logits, const SampleOptions& opt, double u) {
  const int64_t V = static_cast<int64_t>(logits.size());
  MOELAB_CHECK(V >= 1, "sample_token: no logits");
  for (int64_t i = 0; i < V; ++i)
    MOELAB_CHECK(std::isfinite(logits[i]), "sample_token: logit ", i, " is ", logits[i],
                 " (a diverged checkpoint?)");
  // Greedy: the first maximum, i.e. ties go to the lower id.
  if (opt.temperature == 0)
    return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  // Candidates from the most likely down (ties: lower id first); only the top k need ordering.
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  auto more_likely = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const int64_t keep_k = opt.top_k > 0 ? std::min(opt.top_k, V) : V;
  std::partial_sort(order.begin(), order.begin() + keep_k, order.end(), more_likely);
  // Softmax of logits / temperature over the kept candidates (minus the max: exp() <= 1).
  std::vector<double> p(keep_k);
  double total = 0;
  for (int64_t i = 0; i < keep_k; ++i) {
    p[i] = std::exp((logits[order[i]] - logits[order[0]]) / opt.temperature);
    total += p[i];
  }
  // Nucleus: the shortest prefix whose probability reaches top_p (at least one token).
  int64_t keep = keep_k;
  if (opt.top_p < 1) {
    double mass = 0;
    for (keep = 0; keep < keep_k;) {
      mass += p[keep++];
      if (mass >= opt.top_p * total) break;
    }
    total = mass;
  }
  // Inverse CDF of the renormalised kept probabilities at u.
  const double target = u * total;
  double cumulative = 0;
  for (int64_t i = 0; i < keep; ++i) {
    cumulative += p[i];
    if (target < cumulative) return order[i];
  }
  return order[keep - 1];  // u * total rounded up to the last cumulative sum
}

std::vector<int32_t> generate(const Model& model, const std::vector<int32_t>& prompt, const SampleOptions& opt,
                              SampleStats* stats, const Runtime* rt) {
  validate(opt);
  const ModelConfig& cfg = model.config();
  const int64_t P = static_cast<int64_t>(prompt.size()), V = cfg.vocab_size, max_len = cfg.max_position_embeddings;
  MOELAB_CHECK(P >= 1, "generate: the prompt is empty; at least one token is needed to condition on");
  MOELAB_CHECK(P <= max_len, "generate: the prompt has ", P, " tokens, more than max_position_embeddings = ", max_len);
  for (int64_t i = 0; i < P; ++i)
    MOELAB_CHECK(prompt[i] >= 0 && prompt[i] < V, "generate: prompt token ", i, " is ", prompt[i],
                 ", outside the vocabulary [0, ", V, ")");
  const Tensor& params = model.params().flat_params();
  const Device device = params.device();
  MOELAB_CHECK(device == Device::CPU || (rt != nullptr && rt->device == device), "generate: the model is on ",
               device_name(device), " but no runtime for it was given");
  const DType dtype = rt != nullptr ? rt->act : params.dtype();  // the activations' (f64 in tests)
  const int64_t total = std::min(P + opt.max_new_tokens, max_len);  // the final sequence length

  SampleStats st;
  st.prompt_tokens = P;
  st.context_full = P + opt.max_new_tokens > max_len;
  Model::KVCache cache = model.new_cache(1, total);
  st.kv_elements_per_token = cache.elements_per_token();
  st.kv_dtype = cache.dtype;
  // The largest decode call: the prompt with the cache, the whole sequence without.
  Arena arena(model.decode_arena_bytes(opt.use_cache ? P : total), device);

  std::vector<int32_t> seq = prompt;
  std::vector<double> last(opt.vocab_limit > 0 ? std::min(opt.vocab_limit, V) : V);  // the candidates' logits
  // decode(seq[pos:]) at position pos; keeps the logits of the last position.
  auto run = [&](Model::KVCache& c, int64_t pos) {
    const int64_t n = static_cast<int64_t>(seq.size()) - pos;
    arena.reset();
    const Context ctx{&arena, dtype, 1, n, rt != nullptr ? rt->gpu.get() : nullptr};
    Tensor ids = Tensor::empty({1, n}, DType::I32);
    std::copy(seq.begin() + pos, seq.end(), ids.data<int32_t>());
    Tensor logits = Tensor::empty({n, V}, dtype, device);
    model.decode(ctx, device == Device::CPU ? ids : ids.to(device), pos, c, logits);
    const Tensor row = logits.slice(n - 1, n).to(Device::CPU).to(DType::F64);
    std::copy(row.data<double>(), row.data<double>() + last.size(), last.begin());
  };
  using Clock = std::chrono::steady_clock;
  for (int64_t step = 0; static_cast<int64_t>(seq.size()) < total; ++step) {
    const auto t0 = Clock::now();
    if (opt.use_cache) {
      run(cache, cache.length);  // the prompt at step 0, then the newest token
    } else {
      Model::KVCache scratch = model.new_cache(1, static_cast<int64_t>(seq.size()));
      run(scratch, 0);
    }
    seq.push_back(sample_token(last, opt, uniform_at(opt.seed, static_cast<uint64_t>(step))));
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    (step == 0 ? st.prefill_seconds : st.decode_seconds) += seconds;
  }
  st.new_tokens = static_cast<int64_t>(seq.size()) - P;
  if (stats) *stats = st;
  return {seq.begin() + P, seq.end()};
}

std::string format_kv_cache(const ModelConfig& cfg, const SampleStats& s) {
  const int64_t L = cfg.num_hidden_layers, bytes = static_cast<int64_t>(dtype_size(s.kv_dtype));
  const int64_t per_token = s.kv_elements_per_token * bytes, bf16 = s.kv_elements_per_token * 2;
  // The attention layer's own account of its cache (core/nn/cost.h): its formula, and what MHA with
  // the same heads and head dims would cache, from a block declared for the config (nothing allocated).
  ParamBuffer declared, declared_buffers;
  const Block block(declared, declared_buffers, "model.layers.0", cfg, /*moe=*/false);
  const int64_t mha = block.attention_cost({1, 1, s.kv_dtype}).kv_cache_mha_elements * L * bytes;
  char buf[512];
  std::snprintf(buf, sizeof(buf),
                "KV cache: %lld bytes/token (%s x %lld B (%s) = %lld B, x %lld layers); %lld bytes/token in bf16",
                static_cast<long long>(per_token), block.kv_cache_formula().c_str(), static_cast<long long>(bytes),
                dtype_name(s.kv_dtype), static_cast<long long>(per_token / L), static_cast<long long>(L),
                static_cast<long long>(bf16));
  std::string line = buf;
  if (mha != per_token) {
    std::snprintf(buf, sizeof(buf), "; MHA with these heads would cache %lld (%.1fx)", static_cast<long long>(mha),
                  static_cast<double>(mha) / static_cast<double>(per_token));
    line += buf;
  }
  return line;
}

}  // namespace moelab
