#include "core/nn/model.h"

#include <cmath>
#include <tuple>

#include "core/nn/linear.h"
#include "core/ops/columns.h"
#include "core/ops/cross_entropy.h"
#include "core/ops/elementwise.h"

namespace moelab {

namespace {
constexpr int kIgnoreIndex = -100;  // the HF convention; the window layout never produces it
std::string layer_prefix(int64_t l) { return "model.layers." + std::to_string(l); }
}  // namespace

Model::Model(const ModelConfig& cfg) : cfg_(cfg) {
  cfg_.validate();
  const int64_t D = cfg_.hidden_size, L = cfg_.num_hidden_layers;
  const double std = cfg_.initializer_range;
  embed_ = Embedding(params_, "model.embed_tokens", cfg_.vocab_size, D, std);
  blocks_.reserve(static_cast<size_t>(L));
  for (int64_t l = 0; l < L; ++l) {
    block_grad_offset_.push_back(params_.numel_padded());
    blocks_.emplace_back(params_, buffers_, layer_prefix(l), cfg_, cfg_.is_moe_layer(l));
  }
  head_grad_offset_ = params_.numel_padded();
  final_norm_ = RMSNorm(params_, "model.norm", D, cfg_.rms_norm_eps);
  if (!cfg_.tie_word_embeddings) lm_head_ = Linear(params_, "lm_head", D, cfg_.vocab_size, std);
  mtp_grad_offset_ = params_.numel_padded();
  for (int64_t k = 1; k <= cfg_.num_nextn_predict_layers; ++k)
    mtp_.emplace_back(params_, buffers_, layer_prefix(L + k - 1), cfg_);
}

void Model::allocate(Device device, DType dtype) {
  params_.allocate(device, dtype);
  buffers_.allocate(device, dtype, /*with_grads=*/false);
}

void Model::initialize(uint64_t seed) {
  params_.initialize(seed);
  buffers_.initialize(seed);
}

Tensor Model::head_weight() const { return cfg_.tie_word_embeddings ? embed_.weight() : lm_head_.weight(); }
Tensor Model::head_grad() const { return cfg_.tie_word_embeddings ? embed_.grad_weight() : lm_head_.grad_weight(); }

void Model::head_forward(const Context& ctx, const RMSNorm& norm, const Tensor& h, const Tensor& tokens, int64_t k,
                           HeadSaved& hs) const {
  const int64_t B = ctx.batch, T = ctx.seq_len, N = ctx.tokens(), V = cfg_.vocab_size;
  hs.targets = ctx.alloc({B, T}, DType::I32);
  slice_columns(ctx, tokens, k + 1, hs.targets);
  hs.normed = ctx.alloc(h.shape());
  norm.forward(ctx, h, hs.normed, hs.norm);
  hs.logits = ctx.alloc({N, V});
  {
    const PhaseScope phase(ctx.profiler, Phase::DenseGemm);
    linear_gemm_forward(ctx, hs.normed, head_weight(), hs.logits, /*fp8=*/false);
  }
  hs.lse = ctx.alloc_stat({N});
  hs.losses = ctx.alloc_stat({N});
  hs.ce = ctx.alloc({kCrossEntropyStats}, DType::F64);
  const PhaseScope phase(ctx.profiler, Phase::Loss);
  cross_entropy_forward(ctx, hs.logits, hs.targets.reshape({N}), kIgnoreIndex, hs.losses, hs.lse, hs.ce);
}

void Model::head_backward(const Context& ctx, const RMSNorm& norm, const HeadSaved& hs, double weight,
                          const Tensor& grad_h) const {
  const int64_t N = ctx.tokens();
  Tensor grad_logits = ctx.alloc(hs.logits.shape()), grad_normed = ctx.alloc(hs.normed.shape());
  {
    const PhaseScope phase(ctx.profiler, Phase::Loss);
    cross_entropy_backward(ctx, hs.logits, hs.targets.reshape({N}), hs.lse, hs.ce, kIgnoreIndex, weight, grad_logits);
  }
  {
    const PhaseScope phase(ctx.profiler, Phase::DenseGemm);
    linear_gemm_backward(ctx, grad_logits, hs.normed, head_weight(), grad_normed, head_grad(), /*fp8=*/false);
  }
  norm.backward(ctx, hs.norm, grad_normed, grad_h);
}

void Model::forward(const Context& ctx, const Tensor& tokens, Saved& s) const {
  const int64_t B = ctx.batch, T = ctx.seq_len, N = ctx.tokens(), D = cfg_.hidden_size;
  const int64_t depth = cfg_.num_nextn_predict_layers;
  check_dtype("Model::forward", "tokens", tokens, DType::I32);
  check_shape("Model::forward", "tokens", tokens, {B, T + 1 + depth});
  MOELAB_CHECK(T <= cfg_.max_position_embeddings, "Model::forward: seq_len ", T, " exceeds max_position_embeddings ",
               cfg_.max_position_embeddings);
  // Trunk.
  s.head.ids = ctx.alloc({B, T}, DType::I32);
  slice_columns(ctx, tokens, 0, s.head.ids);
  s.hidden.assign(blocks_.size() + 1, Tensor());
  s.blocks.assign(blocks_.size(), Block::Saved());
  s.hidden[0] = ctx.alloc({N, D});
  embed_.forward(ctx, s.head.ids.reshape({N}), s.hidden[0]);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    s.hidden[l + 1] = ctx.alloc({N, D});
    blocks_[l].forward(ctx, s.hidden[l], s.hidden[l + 1], s.blocks[l]);
  }
  head_forward(ctx, final_norm_, s.hidden.back(), tokens, 0, s.head);
  // MTP modules, each fed by the previous depth's hidden state.
  s.mtp.assign(mtp_.size(), MtpSaved());
  Tensor h_prev = s.hidden.back();
  for (size_t i = 0; i < mtp_.size(); ++i) {
    const MtpModule& m = mtp_[i];
    MtpSaved& ms = s.mtp[i];
    const int64_t k = static_cast<int64_t>(i) + 1;
    ms.head.ids = ctx.alloc({B, T}, DType::I32);
    slice_columns(ctx, tokens, k, ms.head.ids);
    ms.emb = ctx.alloc({N, D});
    embed_.forward(ctx, ms.head.ids.reshape({N}), ms.emb);
    ms.out = ctx.alloc({N, D});
    m.forward(ctx, ms.emb, h_prev, ms.out, ms.module);
    head_forward(ctx, m.head_norm(), ms.out, tokens, k, ms.head);
    h_prev = ms.out;
  }
}

StepStatsLayout Model::stats_layout() const {
  StepStatsLayout layout;
  layout.heads = 1 + static_cast<int64_t>(mtp_.size());
  layout.moe_layers = static_cast<int64_t>(moe_layers().size());
  layout.experts = layout.moe_layers > 0 ? cfg_.n_routed_experts : 0;
  return layout;
}

void Model::accumulate_stats(const Exec& ex, const Saved& s, double scale, const Tensor& acc) const {
  std::vector<Tensor> heads = {s.head.ce}, moe;
  for (const MtpSaved& ms : s.mtp) heads.push_back(ms.head.ce);
  for (size_t l = 0; l < blocks_.size(); ++l)
    if (blocks_[l].is_moe()) moe.push_back(s.blocks[l].moe.stats);
  for (size_t i = 0; i < mtp_.size(); ++i)
    if (mtp_[i].block().is_moe()) moe.push_back(s.mtp[i].module.block.moe.stats);
  // total = L_main + (lambda / D) sum_k L_k + the balance terms (MODEL.md).
  const double mtp_weight = mtp_.empty() ? 0.0 : cfg_.mtp_loss_weight / static_cast<double>(mtp_.size());
  step_stats_accumulate(ex, stats_layout(), heads, moe, mtp_weight, scale, acc);
}

Model::Losses Model::losses_of(const double* acc, double ranks) const {
  const StepStatsLayout layout = stats_layout();
  Losses l;
  l.total = acc[StepStatsLayout::kTotal] / ranks;
  l.main = acc[layout.main()] / ranks;
  for (int64_t k = 1; k < layout.heads; ++k) l.mtp.push_back(acc[layout.mtp(k)] / ranks);
  l.seq_aux = acc[layout.seq_aux()] / ranks;
  l.aux = acc[layout.aux()] / ranks;
  l.z = acc[layout.z()] / ranks;
  return l;
}

Model::Losses Model::read_losses(const Context& ctx, const Saved& s) const {
  const StepStatsLayout layout = stats_layout();
  const Tensor acc = ctx.alloc({layout.size()}, DType::F64);
  step_stats_reset(ctx, acc);
  accumulate_stats(ctx, s, 1.0, acc);
  const Tensor host = acc.to(Device::CPU);
  const double* a = host.data<double>();
  const auto bad_head = static_cast<int64_t>(a[StepStatsLayout::kBadHead]) - 1;
  MOELAB_CHECK(bad_head < 0, "Model: the targets of ", bad_head == 0 ? "the main head" : "MTP depth " +
               std::to_string(bad_head), " hold ", static_cast<int64_t>(a[StepStatsLayout::kBadTarget]), " at row ",
               static_cast<int64_t>(a[StepStatsLayout::kBadRow]), ", expected a class in [0, V=", cfg_.vocab_size, ")");
  return losses_of(a);
}

void Model::backward(const Context& ctx, const Saved& s, double grad_scale, GradSync* sync) const {
  const int64_t N = ctx.tokens(), D = cfg_.hidden_size;
  auto ready = [&](int64_t offset) {
    if (sync) sync->grads_ready(ctx, offset);
  };
  const double mtp_weight = mtp_.empty() ? 0.0 : grad_scale * cfg_.mtp_loss_weight / static_cast<double>(mtp_.size());
  // MTP modules, deepest first: grad_carry is d total / d (module k's input hidden state), handed
  // to module k-1's output (or, after module 1, to the trunk's last hidden state).
  Tensor grad_carry;
  for (size_t i = mtp_.size(); i-- > 0;) {
    const MtpModule& m = mtp_[i];
    const MtpSaved& ms = s.mtp[i];
    Tensor grad_out = ctx.alloc({N, D});
    head_backward(ctx, m.head_norm(), ms.head, mtp_weight, grad_out);
    if (grad_carry.defined()) add(ctx, grad_out, grad_carry, grad_out);
    Tensor grad_emb = ctx.alloc({N, D}), grad_h = ctx.alloc({N, D});
    m.backward(ctx, ms.module, grad_out, grad_scale, grad_emb, grad_h);
    embed_.backward(ctx, ms.head.ids.reshape({N}), grad_emb);
    grad_carry = grad_h;
  }
  if (!mtp_.empty()) ready(mtp_grad_offset_);  // the modules' own weights (the shared ones come later)
  // Main head, then the blocks in reverse, then the embedding.
  Tensor grad_h = ctx.alloc({N, D});
  head_backward(ctx, final_norm_, s.head, grad_scale, grad_h);
  if (grad_carry.defined()) add(ctx, grad_h, grad_carry, grad_h);
  ready(head_grad_offset_);
  for (size_t l = blocks_.size(); l-- > 0;) {
    Tensor grad_in = ctx.alloc({N, D});
    blocks_[l].backward(ctx, s.blocks[l], grad_h, grad_scale, grad_in);
    grad_h = grad_in;
    ready(block_grad_offset_[l]);
  }
  embed_.backward(ctx, s.head.ids.reshape({N}), grad_h);
  ready(0);
}

LayerCost Model::head_use_cost(const CostShape& shape) const {
  const int64_t B = shape.batch, T = shape.seq_len, N = shape.tokens(), D = cfg_.hidden_size, V = cfg_.vocab_size;
  LayerCost c;
  c.matmul_params = V * D;
  c.gemm(Phase::DenseGemm, D, V);
  c.saved_per_token = D + D + V + 2 + 2;  // its input, normed, logits, lse and losses, ids and targets
  c.alloc(B * T, DType::I32);  // targets
  c.alloc(N * D, shape.act);   // normed
  c.alloc(N * V, shape.act);   // logits
  c.alloc(N, shape.stat());    // lse
  c.alloc(N, shape.stat());    // losses
  c.alloc(kCrossEntropyStats, DType::F64);  // ce
  c.alloc(N * V, shape.act);   // grad_logits
  c.alloc(N * D, shape.act);   // grad_normed
  return c;
}

Model::CostParts Model::cost_parts(const CostShape& shape) const {
  const int64_t B = shape.batch, T = shape.seq_len, N = shape.tokens(), D = cfg_.hidden_size;
  auto hidden = [&](LayerCost& c) { c.alloc(N * D, shape.act); };  // one [N, D] activation
  CostParts parts;
  parts.embedding = embed_.cost(shape);
  parts.embedding.alloc(B * T, DType::I32);  // the main input's ids
  hidden(parts.embedding);                   // hidden[0]
  for (const Block& b : blocks_) {
    LayerCost c = b.cost(shape);
    hidden(c);  // its output, hidden[l + 1]
    hidden(c);  // the gradient of its input
    parts.blocks.push_back(c);
  }
  parts.head = final_norm_.cost(shape);
  if (!cfg_.tie_word_embeddings) {  // the weight; its GEMM is counted per use below
    const LayerCost weight = lm_head_.cost(shape);
    parts.head.params += weight.params;
    parts.head.active_params += weight.active_params;
  }
  parts.head += head_use_cost(shape);
  hidden(parts.head);  // grad_h, the gradient the head hands to the last block
  for (const MtpModule& m : mtp_) {
    LayerCost c = m.cost(shape);
    c += head_use_cost(shape);
    c.saved_per_token += D;      // Emb(t_{i+k})
    c.alloc(B * T, DType::I32);  // its ids
    for (int i = 0; i < 2; ++i) hidden(c);  // emb, out
    for (int i = 0; i < 3; ++i) hidden(c);  // grad_out, grad_emb, grad_h
    parts.mtp.push_back(c);
  }
  return parts;
}

LayerCost Model::CostParts::total() const {
  LayerCost c = embedding;
  for (const LayerCost& b : blocks) c += b;
  c += head;
  for (const LayerCost& m : mtp) c += m;
  return c;
}

std::vector<int64_t> Model::moe_layers() const {
  std::vector<int64_t> layers;
  for (size_t l = 0; l < blocks_.size(); ++l)
    if (blocks_[l].is_moe()) layers.push_back(static_cast<int64_t>(l));
  for (size_t i = 0; i < mtp_.size(); ++i)
    if (mtp_[i].block().is_moe()) layers.push_back(static_cast<int64_t>(blocks_.size() + i));
  return layers;
}

std::vector<MoEStats> Model::moe_stats(const Saved& s) const {
  std::vector<MoEStats> stats;
  for (size_t l = 0; l < blocks_.size(); ++l)
    if (blocks_[l].is_moe()) stats.push_back(blocks_[l].moe().read_stats(s.blocks[l].moe));
  for (size_t i = 0; i < mtp_.size(); ++i)
    if (mtp_[i].block().is_moe()) stats.push_back(mtp_[i].block().moe().read_stats(s.mtp[i].module.block.moe));
  return stats;
}

int64_t Model::dropped(const Saved& s) const {
  int64_t n = 0;
  for (size_t l = 0; l < blocks_.size(); ++l) n += s.blocks[l].moe.dropped;  // 0 in dense blocks
  for (const MtpSaved& ms : s.mtp) n += ms.module.block.moe.dropped;
  return n;
}

const MoE& Model::moe_of(int64_t layer) const {
  const auto l = static_cast<size_t>(layer);
  const Block& b = l < blocks_.size() ? blocks_[l] : mtp_[l - blocks_.size()].block();
  return b.moe();
}

void Model::set_expert_dispatch(const ExpertDispatch* dispatch) {
  for (Block& b : blocks_)
    if (b.is_moe()) b.moe().set_dispatch(dispatch);
  for (MtpModule& m : mtp_)
    if (m.block().is_moe()) m.block().moe().set_dispatch(dispatch);
}

std::vector<std::vector<FlatRange>> Model::expert_ranges() const {
  std::vector<std::vector<FlatRange>> r;
  for (int64_t l : moe_layers()) r.push_back(moe_of(l).expert_ranges());
  return r;
}

int64_t Model::expert_elements() const {
  int64_t n = 0;
  for (const std::vector<FlatRange>& layer : expert_ranges()) n += layer.back().end - layer.front().begin;
  return n;
}

void Model::update_bias(const Exec& ex, const Tensor& loads) const {
  const std::vector<int64_t> layers = moe_layers();
  const auto L = static_cast<int64_t>(layers.size());
  if (layers.empty()) return;  // a dense model: no bias
  const int64_t E = cfg_.n_routed_experts;
  check_shape("Model::update_bias", "loads", loads, {L, E});
  if (!cfg_.aux_free_bias) return;  // no bias to move
  for (int64_t i = 0; i < L; ++i)
    moe_of(layers[static_cast<size_t>(i)]).update_bias(ex, loads.slice(i, i + 1).reshape({E}));
}

void Model::read_bias_ranges(std::vector<MoEStats>& stats) const {
  const std::vector<int64_t> layers = moe_layers();
  MOELAB_CHECK(stats.size() == layers.size(), "read_bias_ranges: ", stats.size(), " stats for ", layers.size(),
               " MoE layers");
  for (size_t i = 0; i < layers.size(); ++i)
    std::tie(stats[i].bias_min, stats[i].bias_max) = moe_of(layers[i]).bias_range();
}

}  // namespace moelab
