// Generation with a KV cache (MODEL.md, "What a KV cache stores for generation"): the inference path
// of every layer, beside (never inside) the training forward/backward.
//
// decode(pos) runs the n new tokens of each sequence, at positions [pos, pos + n), given a cache of
// positions [0, pos): each attention layer appends the new tokens' cache entries and attends over
// the cache, RoPE turns every query and key by its absolute position (pos_offset = pos), and the
// per-token layers (norms, SwiGLU, MoE) run on the new rows only. A prefill is decode(0) of the whole
// prompt; then one token at a time. The result equals Model::forward's logits up to rounding.
//   MLA:     caches ckv (the normalised latent) and rope(kr): Ckv + Dr numbers per token per layer,
//            and attends in the absorbed form (core/ops/mla_decode.h): W_kvb folds into the query
//            and the output, so no per-head key or value is ever formed.
//   MHA/GQA: caches k (after RoPE) and v: 2 x Hkv x head_dim numbers per token per layer.
//   MoE:     dropless routing at inference (MoE::decode).
// Nothing here keeps activations for a backward: the Saved structs the reused forwards fill are
// thrown away. Each layer's decode_bytes counts what its decode allocates, by core/nn/cost.h's rules
// (Model::decode_arena_bytes sizes generation's arena with their sum).
#include <algorithm>
#include <cmath>

#include "core/nn/model.h"
#include "core/ops/attention_decode.h"
#include "core/ops/columns.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"
#include "core/ops/mla_decode.h"
#include "core/ops/rope.h"

namespace moelab {

namespace {
// cache[b, pos : pos + n] = rows of sequence b, for a cache [B, S, ...] and rows [B*n, ...] (or
// [B, n, ...]): one copy per sequence, since the cache is strided by its capacity S.
void write_cache(const Tensor& cache, const Tensor& rows, int64_t pos, int64_t n) {
  const int64_t B = cache.size(0), S = cache.size(1), width = cache.numel() / (B * S);
  const Tensor src = rows.reshape({B * n, width});
  for (int64_t b = 0; b < B; ++b)
    cache.slice(b, b + 1).reshape({S, width}).slice(pos, pos + n).copy_from(src.slice(b * n, (b + 1) * n));
}

// Cached numbers per position of one sequence in a [B, S, ...] cache tensor (0 when undefined).
int64_t per_position(const Tensor& t) { return t.defined() ? t.numel() / (t.size(0) * t.size(1)) : 0; }
}  // namespace

// ---- MLA ----

MLAttention::KVCache MLAttention::new_cache(int64_t batch, int64_t capacity, DType dtype, Device device) const {
  return {Tensor::zeros({batch, capacity, kv_rank_}, dtype, device), Tensor::zeros({batch, capacity, rope_}, dtype, device)};
}

void MLAttention::decode(const Context& ctx, const Tensor& x, const Tensor& y, KVCache& cache, int64_t pos) const {
  const int64_t B = ctx.batch, n = ctx.seq_len, N = ctx.tokens();
  RMSNorm::Saved unused;
  // The query, as in forward, its rope part turned to the absolute positions pos ...
  Tensor q = ctx.alloc({B, n, heads_, nope_ + rope_});
  if (q_rank_ > 0) {
    Tensor cq_raw = ctx.alloc({N, q_rank_}), cq = ctx.alloc({N, q_rank_});
    q_a_proj_.forward(ctx, x, cq_raw);
    q_a_norm_.forward(ctx, cq_raw, cq, unused);
    q_b_proj_.forward(ctx, cq, q.as_rows(N));
  } else {
    q_proj_.forward(ctx, x, q.as_rows(N));
  }
  rope_forward(ctx, q, q, nope_, rope_, rope_theta_, pos);
  // The new tokens' cache entries: the normalised latent and the turned rope key, nothing per head.
  Tensor kva = ctx.alloc({N, kv_rank_ + rope_}), ckv_raw = ctx.alloc({N, kv_rank_}), ckv = ctx.alloc({N, kv_rank_});
  Tensor kr = ctx.alloc({B, n, 1, rope_});
  kv_a_proj_.forward(ctx, x, kva);
  split_columns(ctx, kva, ckv_raw, kr.as_rows(N));
  kv_a_norm_.forward(ctx, ckv_raw, ckv, unused);
  rope_forward(ctx, kr, kr, 0, rope_, rope_theta_, pos);
  write_cache(cache.ckv, ckv, pos, n);
  write_cache(cache.kr, kr, pos, n);
  // Every head attends over the cached latents with W_kvb folded into its query and output.
  Tensor out = ctx.alloc({B, n, heads_, v_dim_});
  mla_decode_attention(ctx, q, kv_b_proj_.weight(), cache.ckv, cache.kr, scale(), pos, out);
  o_proj_.forward(ctx, out.as_rows(N), y);
}

int64_t MLAttention::decode_bytes(const CostShape& shape) const {
  LayerCost c;
  auto rows = [&](int64_t width) { c.alloc(shape.tokens() * width, shape.act); };
  rows(heads_ * (nope_ + rope_));  // q
  if (q_rank_ > 0) {
    rows(q_rank_);  // cq_raw
    rows(q_rank_);  // cq
    c.activation_bytes += q_a_norm_.cost(shape).activation_bytes;  // its rstd
  }
  rows(kv_rank_ + rope_);  // kva
  rows(kv_rank_);          // ckv_raw
  rows(kv_rank_);          // ckv
  rows(rope_);             // kr
  c.activation_bytes += kv_a_norm_.cost(shape).activation_bytes;
  rows(heads_ * v_dim_);   // out
  return c.activation_bytes;
}

// ---- MHA / GQA ----

GQAttention::KVCache GQAttention::new_cache(int64_t batch, int64_t capacity, DType dtype, Device device) const {
  return {Tensor::zeros({batch, capacity, kv_heads_, head_dim_}, dtype, device),
          Tensor::zeros({batch, capacity, kv_heads_, head_dim_}, dtype, device)};
}

void GQAttention::decode(const Context& ctx, const Tensor& x, const Tensor& y, KVCache& cache, int64_t pos) const {
  const int64_t B = ctx.batch, n = ctx.seq_len, N = ctx.tokens();
  Tensor q = ctx.alloc({B, n, heads_, head_dim_});
  Tensor k = ctx.alloc({B, n, kv_heads_, head_dim_}), v = ctx.alloc({B, n, kv_heads_, head_dim_});
  q_proj_.forward(ctx, x, q.as_rows(N));
  k_proj_.forward(ctx, x, k.as_rows(N));
  v_proj_.forward(ctx, x, v.as_rows(N));
  if (rope_dim_ > 0) {
    rope_forward(ctx, q, q, head_dim_ - rope_dim_, rope_dim_, rope_theta_, pos);
    rope_forward(ctx, k, k, head_dim_ - rope_dim_, rope_dim_, rope_theta_, pos);
  }
  write_cache(cache.k, k, pos, n);
  write_cache(cache.v, v, pos, n);
  Tensor out = ctx.alloc({B, n, heads_, head_dim_});
  attention_decode_forward(ctx, q, cache.k, cache.v,
                           static_cast<float>(1.0 / std::sqrt(static_cast<double>(head_dim_))), pos, out);
  o_proj_.forward(ctx, out.as_rows(N), y);
}

int64_t GQAttention::decode_bytes(const CostShape& shape) const {
  LayerCost c;
  auto rows = [&](int64_t width) { c.alloc(shape.tokens() * width, shape.act); };
  rows(heads_ * head_dim_);     // q
  rows(kv_heads_ * head_dim_);  // k
  rows(kv_heads_ * head_dim_);  // v
  rows(heads_ * head_dim_);     // out
  return c.activation_bytes;
}

// ---- SwiGLU MLP (the dense FFN, and the shared and routed experts) ----

int64_t SwiGLUMLP::decode_bytes(const CostShape& shape) const {
  return 3 * arena_alloc_bytes(shape.tokens() * hidden_size(), shape.act);  // gate, up, hidden
}

// ---- MoE ----

void MoE::decode(const Context& ctx, const Tensor& x, const Tensor& y) const {
  MOELAB_CHECK(!naive_ || x.device() == Device::CPU, "MoE::decode: the naive expert path is a CPU reference (x is ",
               x.str(), ")");
  Saved s;
  route(ctx, x, s);
  // Dropless: route() applied the training capacity to expert_idx when capacity_factor > 0; at
  // inference every token reaches its K experts, as in HF's and DeepSeek's inference code.
  s.expert_idx = s.topk_idx;
  if (naive_) experts_naive(ctx, y, s);
  else experts_grouped(ctx, y, s, nullptr);
  if (cfg_.n_shared_experts > 0) {
    Tensor shared_y = ctx.alloc(x.shape());
    shared_.forward(ctx, x, shared_y, s.shared);
    add(ctx, y, shared_y, y);
  }
}

int64_t MoE::decode_bytes(const CostShape& shape) const {
  const int64_t N = shape.tokens(), D = cfg_.hidden_size, F = cfg_.moe_intermediate_size;
  const int64_t E = cfg_.n_routed_experts, K = cfg_.num_experts_per_tok, M = N * K;  // every assignment runs
  const DType act = shape.act, stat = shape.stat();
  LayerCost c;
  // route(), as in training: the widened input, logits, scores, selection, gates (and expert_idx,
  // which route() makes for the capacity factor even though decode does not use it).
  if (act != stat) c.alloc(N * D, stat);
  c.alloc(N * E, stat);
  c.alloc(N * E, stat);
  c.alloc(N * K, DType::I32);
  c.alloc(N * K, stat);
  if (cfg_.capacity_factor > 0) c.alloc(N * K, DType::I32);
  if (naive_) {
    c.alloc(M * D, act);                                      // expert_y
    c.activation_bytes += M * 3 * arena_alloc_bytes(F, act);  // each assignment's gate, up, hidden
  } else {
    c.alloc(M, DType::I32);  // the dispatch layout's positions
    c.alloc(M * D, act);     // expert_x
    c.alloc(M * D, act);     // expert_y
    for (int i = 0; i < 3; ++i) c.alloc_split(M * F, act, std::min(E, M));  // per expert: gate, up, hidden
  }
  if (cfg_.n_shared_experts > 0) {
    c.alloc(N * D, act);  // shared_y
    c.activation_bytes += shared_.decode_bytes(shape);
  }
  return c.activation_bytes;
}

// ---- Block ----

int64_t Block::KVCache::elements_per_token() const {
  return per_position(mla.ckv) + per_position(mla.kr) + per_position(gqa.k) + per_position(gqa.v);
}

Block::KVCache Block::new_cache(int64_t batch, int64_t capacity, DType dtype, Device device) const {
  KVCache c;
  if (attention_ == AttentionKind::MLA) c.mla = mla_.new_cache(batch, capacity, dtype, device);
  else c.gqa = gqa_.new_cache(batch, capacity, dtype, device);
  return c;
}

void Block::decode(const Context& ctx, const Tensor& x, const Tensor& y, KVCache& cache, int64_t pos) const {
  const Shape shape = x.shape();
  RMSNorm::Saved unused;
  // h = x + Attn(RMSNorm_in(x)), the attention over the cache.
  Tensor normed = ctx.alloc(shape), branch = ctx.alloc(shape), h = ctx.alloc(shape);
  attn_norm_.forward(ctx, x, normed, unused);
  if (attention_ == AttentionKind::MLA) mla_.decode(ctx, normed, branch, cache.mla, pos);
  else gqa_.decode(ctx, normed, branch, cache.gqa, pos);
  add(ctx, x, branch, h);
  // y = h + FFN(RMSNorm_post(h)), per token.
  Tensor normed2 = ctx.alloc(shape), branch2 = ctx.alloc(shape);
  ffn_norm_.forward(ctx, h, normed2, unused);
  if (is_moe_) {
    moe_.decode(ctx, normed2, branch2);
  } else {
    SwiGLUMLP::Saved mlp_unused;
    mlp_.forward(ctx, normed2, branch2, mlp_unused);
  }
  add(ctx, h, branch2, y);
}

int64_t Block::decode_bytes(const CostShape& shape) const {
  LayerCost c;
  for (int i = 0; i < 5; ++i) c.alloc(shape.tokens() * dim_, shape.act);  // normed, branch, h, normed2, branch2
  // The norms' rstd, the attention over the cache, the FFN.
  c.activation_bytes += attn_norm_.cost(shape).activation_bytes + ffn_norm_.cost(shape).activation_bytes;
  c.activation_bytes += with_attention([&](const auto& a) { return a.decode_bytes(shape); });
  c.activation_bytes += is_moe_ ? moe_.decode_bytes(shape) : mlp_.decode_bytes(shape);
  return c.activation_bytes;
}

// ---- Model ----

int64_t Model::KVCache::elements_per_token() const {
  int64_t total = 0;
  for (const Block::KVCache& l : layers) total += l.elements_per_token();
  return total;
}

Model::KVCache Model::new_cache(int64_t batch, int64_t capacity) const {
  MOELAB_CHECK(batch >= 1, "Model::new_cache: batch is ", batch, ", expected >= 1");
  MOELAB_CHECK(capacity >= 1 && capacity <= cfg_.max_position_embeddings, "Model::new_cache: capacity ", capacity,
               " positions, expected 1 .. max_position_embeddings = ", cfg_.max_position_embeddings);
  KVCache c;
  c.batch = batch;
  c.capacity = capacity;
  // The cache holds activations: the compute dtype (bf16 in mixed precision), like the rows written to it.
  c.dtype = params_.has_compute_copy() ? params_.flat_compute().dtype() : params_.flat_params().dtype();
  for (const Block& b : blocks_) c.layers.push_back(b.new_cache(batch, capacity, c.dtype, params_.flat_params().device()));
  return c;
}

void Model::decode(const Context& ctx, const Tensor& ids, int64_t pos, KVCache& cache, const Tensor& logits) const {
  const int64_t B = ctx.batch, n = ctx.seq_len, N = ctx.tokens(), D = cfg_.hidden_size;
  check_dtype("Model::decode", "ids", ids, DType::I32);
  check_shape("Model::decode", "ids", ids, {B, n});
  check_shape("Model::decode", "logits", logits, {N, cfg_.vocab_size});
  MOELAB_CHECK(cache.batch == B && cache.layers.size() == blocks_.size(), "Model::decode: the cache holds ",
               cache.batch, " sequences of ", cache.layers.size(), " layers, the call has ", B, " and the model ",
               blocks_.size());
  MOELAB_CHECK(n >= 1, "Model::decode: no tokens to decode (ctx.seq_len = ", n, ")");
  MOELAB_CHECK(pos >= 0 && pos <= cache.length, "Model::decode: ", n, " tokens at position ", pos,
               ", but the cache holds positions [0, ", cache.length, "): decode continues from at most its length");
  MOELAB_CHECK(pos + n <= cache.capacity, "Model::decode: positions [", pos, ", ", pos + n,
               ") exceed the cache's capacity of ", cache.capacity, " (max_position_embeddings = ",
               cfg_.max_position_embeddings, ")");
  Tensor h = ctx.alloc({N, D});
  embed_.forward(ctx, ids.reshape({N}), h);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    Tensor next = ctx.alloc({N, D});
    blocks_[l].decode(ctx, h, next, cache.layers[l], pos);
    h = next;
  }
  Tensor normed = ctx.alloc({N, D});
  RMSNorm::Saved unused;
  final_norm_.forward(ctx, h, normed, unused);
  matmul_forward(ctx, normed, head_weight(), logits);
  cache.length = pos + n;
}

size_t Model::decode_arena_bytes(int64_t rows) const {
  // The rows run as one sequence (the counts depend on B x n only), in the activations' dtype: the
  // compute copy's (bf16 in mixed precision), else the parameters' (f32, f64 in gradient checks).
  const DType act = params_.has_compute_copy() ? params_.flat_compute().dtype() : params_.flat_params().dtype();
  const CostShape shape{1, rows, act};
  LayerCost c;
  c.alloc(rows * cfg_.hidden_size, act);  // the embedding's output
  for (const Block& b : blocks_) {
    c.alloc(rows * cfg_.hidden_size, act);  // the block's output
    c.activation_bytes += b.decode_bytes(shape);
  }
  c.alloc(rows * cfg_.hidden_size, act);                    // the final norm's output
  c.activation_bytes += final_norm_.cost(shape).activation_bytes;  // its rstd
  return static_cast<size_t>(c.activation_bytes);
}

}  // namespace moelab
