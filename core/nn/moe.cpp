// DeepSeekMoE layer: router, routed experts (grouped or naive), shared experts, balance losses.
#include "core/nn/moe.h"

#include <algorithm>

#include "core/ops/activation.h"
#include "core/ops/elementwise.h"
#include "core/ops/matmul.h"
#include "core/ops/moe_balance.h"
#include "core/ops/moe_bias.h"
#include "core/ops/moe_route.h"
#include "core/ops/op_util.h"
#include "core/ops/step_stats.h"

namespace moelab {

namespace {
// The naive path's combine, written as the per-token sum it is (no permutation, no layout):
//   y[n] = sum_{k kept} w[n, k] * expert_y[n*K + k]
template <typename T>
void naive_combine(const Tensor& expert_y, const Tensor& expert_idx, const Tensor& w, const Tensor& y) {
  const int64_t N = y.size(0), D = y.size(1), K = w.size(1);
  const T* ey = expert_y.data<T>();
  const T* wp = w.data<T>();
  const int32_t* idx = expert_idx.data<int32_t>();
  T* yp = y.data<T>();
  for (int64_t n = 0; n < N; ++n) {
    std::fill_n(yp + n * D, D, T(0));
    for (int64_t k = 0; k < K; ++k)
      if (idx[n * K + k] >= 0)
        for (int64_t d = 0; d < D; ++d) yp[n * D + d] += wp[n * K + k] * ey[(n * K + k) * D + d];
  }
}

// Its backward: grad_expert_y[n*K + k] = w[n, k] * grad_y[n], grad_w[n, k] = <grad_y[n], expert_y[n*K + k]>
// (both 0 for a dropped assignment).
template <typename T>
void naive_combine_backward(const Tensor& grad_y, const Tensor& expert_y, const Tensor& expert_idx, const Tensor& w,
                            const Tensor& grad_expert_y, const Tensor& grad_w) {
  const int64_t N = grad_y.size(0), D = grad_y.size(1), K = w.size(1);
  const T* gy = grad_y.data<T>();
  const T* ey = expert_y.data<T>();
  const T* wp = w.data<T>();
  const int32_t* idx = expert_idx.data<int32_t>();
  T* gey = grad_expert_y.data<T>();
  T* gw = grad_w.data<T>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t a = n * K + k;
      const bool kept = idx[a] >= 0;
      T dot = 0;
      for (int64_t d = 0; d < D; ++d) {
        gey[a * D + d] = kept ? wp[a] * gy[n * D + d] : T(0);
        if (kept) dot += gy[n * D + d] * ey[a * D + d];
      }
      gw[a] = dot;
    }
}
// The expert path's pipeline, forward and backward alike: per chunk, a transfer in (rows or
// output gradients), the local experts, a transfer out. Overlapped, every inbound transfer starts
// at once and `meanwhile` (the shared experts) runs while they travel, then each outbound transfer
// travels while the next chunk computes; otherwise each transfer is waited for as soon as it
// starts. The same computations run in the same order either way: only the waits move.
void run_chunks(size_t chunks, bool overlap, const std::function<PendingDispatch(size_t)>& in,
                const std::function<void(size_t)>& compute, const std::function<PendingDispatch(size_t)>& out,
                const std::function<void()>& meanwhile) {
  std::vector<PendingDispatch> arriving(chunks), leaving(chunks);
  for (size_t c = 0; overlap && c < chunks; ++c) arriving[c] = in(c);
  if (meanwhile) meanwhile();
  for (size_t c = 0; c < chunks; ++c) {
    if (!overlap) arriving[c] = in(c);
    finish(arriving[c]);
    compute(c);
    leaving[c] = out(c);
    if (!overlap) finish(leaving[c]);
  }
  for (PendingDispatch& w : leaving) finish(w);
}

}  // namespace

MoE::MoE(ParamBuffer& params, ParamBuffer& buffers, const std::string& prefix, const ModelConfig& cfg)
    : cfg_(cfg), buffers_(&buffers) {
  cfg.validate();
  const int64_t D = cfg.hidden_size, F = cfg.moe_intermediate_size, E = cfg.n_routed_experts;
  const double init_std = cfg.initializer_range;
  // Declared in the order of HF's DeepseekV3MoE (experts, gate, shared_experts), so the flat
  // buffer and the checkpoints list them as HF's state_dict does.
  experts_.reserve(E);
  for (int64_t e = 0; e < E; ++e)
    experts_.emplace_back(params, prefix + ".experts." + std::to_string(e), D, F, init_std);
  gate_ = Linear(params, prefix + ".gate", D, E, init_std, /*weight_decay=*/true);
  if (cfg.aux_free_bias)
    bias_index_ = buffers.declare({prefix + ".gate.e_score_correction_bias", {E}, Init::Zeros, 0.0f, false});
  if (cfg.n_shared_experts > 0)
    shared_ = SwiGLUMLP(params, prefix + ".shared_experts", D, cfg.n_shared_experts * F, init_std);
}

std::vector<FlatRange> MoE::expert_ranges() const {
  std::vector<FlatRange> r(experts_.size());
  for (size_t e = 0; e < experts_.size(); ++e)  // each ends where the next declaration (the gate last) begins
    r[e] = {experts_[e].flat_offset(), e + 1 < experts_.size() ? experts_[e + 1].flat_offset() : gate_.flat_offset()};
  return r;
}

void MoE::set_dispatch(const ExpertDispatch* dispatch) { dispatch_ = dispatch; }
void MoE::set_naive(bool naive) { naive_ = naive; }

Tensor MoE::e_score_correction_bias() const {
  return cfg_.aux_free_bias ? buffers_->param(bias_index_) : Tensor();
}

double moe_max_vio(const std::vector<double>& load, int64_t tokens, int64_t k) {
  if (load.empty()) return 0.0;
  const double mean = static_cast<double>(tokens * k) / static_cast<double>(load.size());
  return (*std::max_element(load.begin(), load.end()) - mean) / mean;
}

void MoE::route(const Context& ctx, const Tensor& x, Saved& s) const {
  const PhaseScope phase(ctx.profiler, Phase::Router);
  const int64_t N = x.size(0), E = cfg_.n_routed_experts, K = cfg_.num_experts_per_tok;
  s.x = x;
  // The router runs in full precision (DESIGN.md, "Precision"): the gate GEMM reads the f32 master
  // weight and an f32 copy of a bf16 input, and every router tensor is f32.
  s.x_router = x;
  if (x.dtype() != ctx.stat_dtype()) {
    s.x_router = ctx.alloc_stat(x.shape());
    cast(ctx, x, s.x_router);
  }
  s.logits = ctx.alloc_stat({N, E});
  matmul_forward(ctx, s.x_router, gate_.master_weight(), s.logits);
  s.scores = ctx.alloc_stat({N, E});
  if (cfg_.scoring_func == ScoreFunc::Sigmoid) sigmoid_forward(ctx, s.logits, s.scores);
  else softmax_forward(ctx, s.logits, s.scores);

  s.topk_idx = ctx.alloc({N, K}, DType::I32);
  // Group-limited routing, or node-limited routing with the nodes as groups (ModelConfig::route_groups).
  const ModelConfig::RouteGroups groups = cfg_.route_groups();
  moe_route_topk(ctx, s.scores, e_score_correction_bias(), groups.n_group, groups.topk_group, groups.group_topk,
                 s.topk_idx);
  s.topk_weights = ctx.alloc_stat({N, K});
  moe_gate_forward(ctx, s.scores, s.topk_idx, cfg_.norm_topk_prob, cfg_.routed_scaling_factor, s.topk_weights);

  s.expert_idx = s.topk_idx;
  s.dropped = 0;
  if (cfg_.capacity_factor > 0) {
    s.expert_idx = ctx.alloc({N, K}, DType::I32);
    s.dropped =
        moe_capacity_drop(ctx, s.scores, s.topk_idx, moe_capacity(cfg_.capacity_factor, N, K, E), s.expert_idx);
  }
}

MoEStats MoE::read_stats(const Saved& s) const {
  MOELAB_CHECK(s.stats.defined(), "MoE::read_stats: no statistics (run forward first)");
  const Tensor host = s.stats.to(Device::CPU);
  const double* p = host.data<double>();
  MoEStats st;
  st.seq_aux_loss = p[kMoeStatSeqAux];
  st.aux_loss = p[kMoeStatAux];
  st.z_loss = p[kMoeStatZ];
  st.load.assign(p + kMoeStats, p + host.numel());
  st.dropped = s.dropped;
  st.max_vio = moe_max_vio(st.load, s.scores.size(0), cfg_.num_experts_per_tok);
  return st;
}

void MoE::statistics(const Context& ctx, Saved& s) const {
  const PhaseScope phase(ctx.profiler, Phase::Router);
  const int64_t N = s.scores.size(0), E = cfg_.n_routed_experts;
  // The load counts selections before the drops (GOLDEN.md): it measures what the router asks for.
  s.stats = ctx.alloc({kMoeStats + E}, DType::F64);
  moe_count_tokens(ctx, s.topk_idx, s.stats.slice(kMoeStats, kMoeStats + E));
  // The batch-level loss of a data-parallel step is the GLOBAL batch's: its f counts every
  // process's selections (one small sum over the processes per MoE layer; each process then
  // weighs its own P by it, and the step's mean over processes is the global loss).
  s.batch_fractions.clear();
  if (cfg_.aux_loss_alpha > 0 && ctx.data_parallel && ctx.data_parallel->ranks() > 1) {
    // The loads come to the host for the sum over the processes (on CUDA a wait for the device:
    // this configuration's one extra host wait per MoE layer, core/exec.h).
    const Tensor load = s.stats.slice(kMoeStats, s.stats.numel()).to(Device::CPU);
    std::vector<double> counts(load.data<double>(), load.data<double>() + load.numel());
    ctx.data_parallel->sum(counts);
    const double rows = static_cast<double>(N) * ctx.data_parallel->ranks();
    const double scale = static_cast<double>(cfg_.n_routed_experts) / (cfg_.num_experts_per_tok * rows);
    for (double c : counts) s.batch_fractions.push_back(c * scale);
  }
  s.stats.slice(0, kMoeStats).zero();  // a loss that is off stays 0 (the step reads all three)
  auto loss = [&](int64_t entry) { return s.stats.slice(entry, entry + 1); };
  if (cfg_.seq_aux_loss_alpha > 0)
    moe_aux_loss_forward(ctx, s.scores, s.topk_idx, ctx.seq_len, cfg_.seq_aux_loss_alpha, loss(kMoeStatSeqAux));
  if (cfg_.aux_loss_alpha > 0)
    moe_aux_loss_forward(ctx, s.scores, s.topk_idx, N, cfg_.aux_loss_alpha, loss(kMoeStatAux), s.batch_fractions);
  if (cfg_.router_z_loss_coef > 0) moe_z_loss_forward(ctx, s.logits, cfg_.router_z_loss_coef, loss(kMoeStatZ));
}

void MoE::experts_grouped(const Context& ctx, const Tensor& y, Saved& s, const std::function<void()>& meanwhile) const {
  const ExpertDispatch& d = dispatch();
  PhaseScope permute(ctx.profiler, Phase::PermuteCombine);
  s.layout = d.layout(ctx, s.expert_idx, s.topk_weights, cfg_.n_routed_experts);
  const DispatchLayout& layout = *s.layout;
  const int64_t first = layout.first_expert, count = static_cast<int64_t>(layout.num_tokens_per_expert.size());
  MOELAB_CHECK(first >= 0 && first + count <= cfg_.n_routed_experts, "MoE: the dispatch's local experts [", first,
               ", ", first + count, ") are not inside [0, n_routed_experts = ", cfg_.n_routed_experts, ")");
  const int64_t M = layout.rows(), D = cfg_.hidden_size;
  const size_t C = layout.chunks.size();
  const Tensor expert_x = ctx.alloc({M, D});
  s.expert_y = ctx.alloc({M, D});
  s.experts.assign(C * static_cast<size_t>(count), {});
  // Each local expert runs once on each chunk's block of its rows (an empty block is skipped): one
  // cuBLASLt call per expert, chunk and projection. A grouped GEMM over all experts would replace
  // this loop (and its backward twin) and nothing else.
  auto compute = [&](size_t c) {
    const PhaseScope experts(ctx.profiler, Phase::ExpertGemm);
    const Tensor xc = layout.chunk_rows(expert_x, c), yc = layout.chunk_rows(s.expert_y, c);
    const std::vector<int64_t>& rows = layout.chunks[c].rows_per_expert;
    for (int64_t i = 0, row = 0; i < count; row += rows[i], ++i)
      if (rows[i] > 0)
        experts_[first + i].forward(ctx, xc.slice(row, row + rows[i]), yc.slice(row, row + rows[i]),
                                    s.experts[c * static_cast<size_t>(count) + static_cast<size_t>(i)]);
  };
  run_chunks(layout.chunks.size(), d.overlap(),
             [&](size_t c) { return d.dispatch_chunk(ctx, layout, c, s.x, layout.chunk_rows(expert_x, c)); }, compute,
             [&](size_t c) { return d.combine_chunk(ctx, layout, c, layout.chunk_rows(s.expert_y, c), y); }, meanwhile);
}

void MoE::experts_naive(const Context& ctx, const Tensor& y, Saved& s) const {
  const int64_t N = s.x.size(0), K = cfg_.num_experts_per_tok;
  s.expert_y = ctx.alloc({N * K, cfg_.hidden_size});
  s.expert_y.zero();  // the rows of dropped assignments stay 0
  s.experts.assign(N * K, {});
  const int32_t* idx = s.expert_idx.data<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t a = n * K + k;
      if (idx[a] >= 0) experts_[idx[a]].forward(ctx, s.x.slice(n, n + 1), s.expert_y.slice(a, a + 1), s.experts[a]);
    }
  ops_detail::dispatch_cpu_float("MoE naive combine", y, [&](auto tag) {
    naive_combine<decltype(tag)>(s.expert_y, s.expert_idx, s.topk_weights, y);
  });
}

void MoE::forward(const Context& ctx, const Tensor& x, const Tensor& y, Saved& s) const {
  const int64_t N = ctx.tokens(), D = cfg_.hidden_size;
  MOELAB_CHECK(x.ndim() == 2 && x.size(0) == N && x.size(1) == D, "MoE::forward: x is ", x.str(), ", expected [N = ",
               N, " (batch ", ctx.batch, " x seq_len ", ctx.seq_len, "), D = ", D, "]");
  check_shape("MoE::forward", "y", y, x.shape());
  MOELAB_CHECK(!naive_ || (dispatch_ == nullptr && x.device() == Device::CPU), "MoE::forward: the naive expert path "
               "is a single-process CPU reference (x is ", x.str(), (dispatch_ ? ", and a custom ExpertDispatch is set)" : ")"));
  route(ctx, x, s);
  statistics(ctx, s);
  s.naive = naive_;
  s.layout.reset();
  // The shared experts need no dispatch: the grouped path runs them while its transfers are in flight.
  Tensor shared_y;
  auto shared = [&] {
    if (cfg_.n_shared_experts == 0) return;
    shared_y = ctx.alloc({N, D});
    shared_.forward(ctx, x, shared_y, s.shared);
  };
  if (naive_) {
    experts_naive(ctx, y, s);
    shared();
  } else {
    experts_grouped(ctx, y, s, shared);
  }
  if (cfg_.n_shared_experts > 0) add(ctx, y, shared_y, y);
}

void MoE::experts_grouped_backward(const Context& ctx, const Saved& s, const Tensor& grad_y, const Tensor& grad_x,
                                   const Tensor& grad_topk_weights, const std::function<void()>& meanwhile) const {
  const ExpertDispatch& d = dispatch();
  const DispatchLayout& layout = *s.layout;
  const int64_t M = layout.rows(), D = cfg_.hidden_size;
  const Tensor grad_expert_y = ctx.alloc({M, D}), grad_expert_x = ctx.alloc({M, D});
  const PhaseScope permute(ctx.profiler, Phase::PermuteCombine);
  const size_t C = layout.chunks.size();
  const int64_t count = static_cast<int64_t>(layout.num_tokens_per_expert.size());
  auto compute = [&](size_t c) {  // each expert's chunks in chunk order: the weight gradients add up the same way
    const PhaseScope experts(ctx.profiler, Phase::ExpertGemm);
    const Tensor gy = layout.chunk_rows(grad_expert_y, c), gx = layout.chunk_rows(grad_expert_x, c);
    const std::vector<int64_t>& rows = layout.chunks[c].rows_per_expert;
    for (int64_t i = 0, row = 0; i < count; row += rows[i], ++i)
      if (rows[i] > 0)
        experts_[layout.first_expert + i].backward(ctx, s.experts[c * static_cast<size_t>(count) + static_cast<size_t>(i)],
                                                   gy.slice(row, row + rows[i]), gx.slice(row, row + rows[i]));
  };
  run_chunks(
      C, d.overlap(),
      [&](size_t c) {
        return d.combine_backward_chunk(ctx, layout, c, grad_y, layout.chunk_rows(s.expert_y, c),
                                        layout.chunk_rows(grad_expert_y, c), grad_topk_weights);
      },
      compute,
      [&](size_t c) { return d.dispatch_backward_chunk(ctx, layout, c, layout.chunk_rows(grad_expert_x, c), grad_x); },
      meanwhile);
}

void MoE::experts_naive_backward(const Context& ctx, const Saved& s, const Tensor& grad_y, const Tensor& grad_x,
                                 const Tensor& grad_topk_weights) const {
  const int64_t N = s.x.size(0), K = cfg_.num_experts_per_tok, D = cfg_.hidden_size;
  Tensor grad_expert_y = ctx.alloc({N * K, D}), grad_row = ctx.alloc({1, D});
  ops_detail::dispatch_cpu_float("MoE naive combine backward", grad_y, [&](auto tag) {
    naive_combine_backward<decltype(tag)>(grad_y, s.expert_y, s.expert_idx, s.topk_weights, grad_expert_y,
                                          grad_topk_weights);
  });
  grad_x.zero();
  const int32_t* idx = s.expert_idx.data<int32_t>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t a = n * K + k;
      if (idx[a] < 0) continue;
      experts_[idx[a]].backward(ctx, s.experts[a], grad_expert_y.slice(a, a + 1), grad_row);
      add(ctx, grad_x.slice(n, n + 1), grad_row, grad_x.slice(n, n + 1));
    }
}

void MoE::router_backward(const Context& ctx, const Saved& s, const Tensor& grad_topk_weights,
                          double balance_grad_scale, const Tensor& grad_x) const {
  const PhaseScope phase(ctx.profiler, Phase::Router);
  const int64_t N = s.scores.size(0), E = cfg_.n_routed_experts;
  // d/ds: the gate values (only the selected experts), then each balance loss through P.
  Tensor grad_scores = ctx.alloc_stat({N, E});
  moe_gate_backward(ctx, grad_topk_weights, s.scores, s.topk_idx, cfg_.norm_topk_prob, cfg_.routed_scaling_factor,
                    grad_scores);
  if (cfg_.seq_aux_loss_alpha > 0)
    moe_aux_loss_backward(ctx, s.scores, s.topk_idx, ctx.seq_len, cfg_.seq_aux_loss_alpha, balance_grad_scale,
                          grad_scores);
  if (cfg_.aux_loss_alpha > 0)
    moe_aux_loss_backward(ctx, s.scores, s.topk_idx, N, cfg_.aux_loss_alpha, balance_grad_scale, grad_scores,
                          s.batch_fractions);
  // d/dlogits: through the score function, plus the z-loss, which reads the logits directly.
  Tensor grad_logits = ctx.alloc_stat({N, E});
  if (cfg_.scoring_func == ScoreFunc::Sigmoid) sigmoid_backward(ctx, grad_scores, s.scores, grad_logits);
  else softmax_backward(ctx, grad_scores, s.scores, grad_logits);
  if (cfg_.router_z_loss_coef > 0)
    moe_z_loss_backward(ctx, s.logits, cfg_.router_z_loss_coef, balance_grad_scale, grad_logits);
  Tensor grad_x_router = ctx.alloc_stat({N, cfg_.hidden_size});
  matmul_backward(ctx, grad_logits, s.x_router, gate_.master_weight(), grad_x_router, gate_.grad_weight());
  if (grad_x_router.dtype() != grad_x.dtype()) {
    Tensor narrowed = ctx.alloc(grad_x_router.shape());
    cast(ctx, grad_x_router, narrowed);
    grad_x_router = narrowed;
  }
  add(ctx, grad_x, grad_x_router, grad_x);
}

void MoE::backward(const Context& ctx, const Saved& s, const Tensor& grad_y, double balance_grad_scale,
                   const Tensor& grad_x) const {
  const int64_t N = s.x.size(0), K = cfg_.num_experts_per_tok, D = cfg_.hidden_size;
  check_shape("MoE::backward", "grad_y", grad_y, s.x.shape());
  check_shape("MoE::backward", "grad_x", grad_x, s.x.shape());
  MOELAB_CHECK(s.naive || s.layout, "MoE::backward: saved has no dispatch layout (was forward run with this Saved?)");
  Tensor grad_topk_weights = ctx.alloc_stat({N, K});
  Tensor grad_x_shared;
  auto shared = [&] {  // as in forward: while the grouped path's transfers are in flight
    if (cfg_.n_shared_experts == 0) return;
    grad_x_shared = ctx.alloc({N, D});
    shared_.backward(ctx, s.shared, grad_y, grad_x_shared);
  };
  if (s.naive) {
    experts_naive_backward(ctx, s, grad_y, grad_x, grad_topk_weights);
    shared();
  } else {
    experts_grouped_backward(ctx, s, grad_y, grad_x, grad_topk_weights, shared);
  }
  router_backward(ctx, s, grad_topk_weights, balance_grad_scale, grad_x);
  if (cfg_.n_shared_experts > 0) add(ctx, grad_x, grad_x_shared, grad_x);
}

void MoE::update_bias(const Exec& ex, const Tensor& load) const {
  if (!cfg_.aux_free_bias) return;
  // In place, on the bias's device: under-loaded experts gain gamma, over-loaded ones lose it.
  moe_bias_update(ex, load, cfg_.bias_update_speed, e_score_correction_bias());
}

std::pair<double, double> MoE::bias_range() const {
  if (!cfg_.aux_free_bias) return {0.0, 0.0};
  const Tensor bias = e_score_correction_bias();
  const Tensor b = (bias.device() == Device::CPU ? bias : bias.to(Device::CPU)).to(DType::F64);
  const double* p = b.data<double>();
  const auto [lo, hi] = std::minmax_element(p, p + b.numel());
  return {*lo, *hi};
}

LayerCost MoE::cost(const CostShape& shape) const {
  const int64_t N = shape.tokens(), D = cfg_.hidden_size, F = cfg_.moe_intermediate_size;
  const int64_t E = cfg_.n_routed_experts, K = cfg_.num_experts_per_tok;
  const DType act = shape.act, stat = shape.stat();
  LayerCost c;
  // The router's GEMM is router time; each token's K experts are expert time; the shared experts,
  // which run on every token outside both, dense GEMM time (core/profile.h).
  LayerCost gate = gate_.cost(shape);
  gate.move_flops(Phase::DenseGemm, Phase::Router);
  gate.not_fp8();  // it calls matmul itself, in the activation precision
  c += gate;
  LayerCost expert = experts_.front().cost(shape);
  expert.move_flops(Phase::DenseGemm, Phase::ExpertGemm);
  c.params += E * expert.params;
  c.active_params += K * expert.active_params;
  c.matmul_params += K * expert.matmul_params;
  c.fp8_in += K * expert.fp8_in;
  c.fp8_out += K * expert.fp8_out;
  c.fp8_flops += static_cast<double>(K) * expert.fp8_flops;
  c.fp8_weights += E * expert.fp8_weights;
  for (size_t p = 0; p < c.forward_flops.size(); ++p) {
    c.forward_flops[p] += static_cast<double>(K) * expert.forward_flops[p];
    c.backward_flops[p] += static_cast<double>(K) * expert.backward_flops[p];
  }
  if (cfg_.n_shared_experts > 0) c += shared_.cost(shape);  // its arena too: [N, S*F] blocks

  // Saved: logits, scores; topk_idx, topk_weights, the dispatch positions (and expert_idx after
  // drops); the experts' input and output rows and each one's gate, up, hidden (the shared experts
  // count theirs).
  c.saved_per_token += 2 * E + 3 * K + (cfg_.capacity_factor > 0 ? K : 0) + 2 * K * D + 3 * K * F;

  // The router, forward then backward, in full precision: a bf16 input is widened to f32 first.
  const bool widen = act != stat;
  if (widen) c.alloc(N * D, stat);  // x_router
  c.alloc(N * E, stat);             // logits
  c.alloc(N * E, stat);             // scores
  c.alloc(N * K, DType::I32);       // topk_idx
  c.alloc(N * K, stat);             // topk_weights
  if (cfg_.capacity_factor > 0) c.alloc(N * K, DType::I32);  // expert_idx
  c.alloc(kMoeStats + E, DType::F64);  // stats
  c.alloc(N * K, stat);             // grad_topk_weights
  c.alloc(N * E, stat);             // grad_scores
  c.alloc(N * E, stat);             // grad_logits
  c.alloc(N * D, stat);             // grad_x_router
  if (widen) c.alloc(N * D, act);   // grad_x_router narrowed
  if (cfg_.n_shared_experts > 0) {
    c.alloc(N * D, act);            // shared_y
    c.alloc(N * D, act);            // grad_x_shared
  }
  // The routed experts, dropless: M = N x K rows (capacity drops only remove rows).
  const int64_t M = N * K;
  if (naive_) {
    // One row per assignment: expert_y and its gradient [M, D], a [1, D] row gradient, and for each
    // assignment its expert's [1, F] gate, up, hidden, their three gradients and a [1, D] grad_x_up.
    c.alloc(M * D, act);            // expert_y
    c.alloc(M * D, act);            // grad_expert_y
    c.alloc(D, act);                // grad_row
    c.activation_bytes += M * (6 * arena_alloc_bytes(F, act) + arena_alloc_bytes(D, act));
  } else {
    c.alloc(M, DType::I32);         // the dispatch layout's positions [N, K]
    c.alloc(M * D, act);            // expert_x
    c.alloc(M * D, act);            // expert_y
    c.alloc(M * D, act);            // grad_expert_y
    c.alloc(M * D, act);            // grad_expert_x
    // Each expert with rows allocates its own blocks: gate, up, hidden [rows, F] forward, their
    // gradients and grad_x_up [rows, D] backward.
    const int64_t pieces = std::min(E, M);
    for (int i = 0; i < 6; ++i) c.alloc_split(M * F, act, pieces);
    c.alloc_split(M * D, act, pieces);
  }
  return c;
}

}  // namespace moelab
