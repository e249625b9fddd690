// EPDispatch (dist/ep_dispatch.h): the send positions and counts, the exchanges, and the reuse of
// core/ops/moe_dispatch's gathers and weighted sums on both sides of each exchange.
#include "dist/ep_dispatch.h"

#include <vector>

#include "core/ops/elementwise.h"
#include "core/ops/fp8_quant.h"
#include "core/ops/moe_dispatch.h"

namespace moelab::dist {

namespace {

// What layout() decided on this rank, for the calls after it.
struct EPLayout final : DispatchLayout {
  int64_t tokens = 0, slots = 0;             // N, K
  Tensor pos_send;                           // i32 [N, R]: row of (token, rank) in what is sent, or -1
  std::vector<int64_t> send_rows, recv_rows; // [R] rows to and from each rank
  int64_t rows_sent = 0, rows_received = 0;  // S, Rr
  Tensor pos_recv;                           // i32 [Rr, K]: row of each received (row, slot) in expert_x, or -1
  // The weights the received rows came with: sent by combine() (the forward's), read again by
  // combine_backward() (the layout lives in the MoE layer's Saved from forward to backward).
  mutable Tensor recv_weights;               // [Rr, K]
};

const EPLayout& ep_layout(const DispatchLayout& layout) {
  const auto* ep = dynamic_cast<const EPLayout*>(&layout);
  MOELAB_CHECK(ep != nullptr, "EPDispatch: the layout was made by another ExpertDispatch (layout() and the calls "
               "after it must go to the same dispatch)");
  return *ep;
}

std::vector<int64_t> times(const std::vector<int64_t>& rows, int64_t cols) {
  std::vector<int64_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * cols;
  return out;
}

// Rows [sum out_rows, C] to the peers, out_rows[p] of them to rank p, in rank order; returns what
// arrives, [sum in_rows, C], from the arena.
Tensor exchange(Comm& group, const Context& ctx, const Tensor& send, const std::vector<int64_t>& out_rows,
                const std::vector<int64_t>& in_rows) {
  const int64_t cols = send.size(1);
  int64_t total = 0;
  for (int64_t r : in_rows) total += r;
  const Tensor recv = ctx.alloc({total, cols}, send.dtype());
  group.all_to_all_v(send.reshape({send.numel()}), times(out_rows, cols), recv.reshape({recv.numel()}),
                     times(in_rows, cols));
  return recv;
}

// A host i32 tensor on the context's device (in its arena).
Tensor to_context(const Context& ctx, const Tensor& host) {
  if (ctx.device() == Device::CPU) return host;
  const Tensor t = ctx.alloc(host.shape(), host.dtype());
  t.copy_from(host);
  return t;
}

}  // namespace

EPDispatch::EPDispatch(Comm& group, DType wire) : group_(group), wire_(wire) {
  MOELAB_CHECK(wire == DType::F32 || wire == DType::BF16 || wire == DType::FP8_E4M3, "EPDispatch: dispatch dtype ",
               dtype_name(wire), " (expected f32, bf16 or fp8_e4m3)");
}

std::shared_ptr<const DispatchLayout> EPDispatch::layout(const Context& ctx, const Tensor& topk_idx,
                                                         int64_t num_experts) const {
  const int R = group_.size(), me = group_.rank();
  MOELAB_CHECK(topk_idx.ndim() == 2 && topk_idx.dtype() == DType::I32, "EPDispatch::layout: topk_idx is ",
               topk_idx.str(), ", expected i32 [N, K]");
  MOELAB_CHECK(num_experts % R == 0, "expert parallelism: ", num_experts, " experts do not split evenly over the ", R,
               " ranks of the expert-parallel group");
  const int64_t per = num_experts / R, N = topk_idx.size(0), K = topk_idx.size(1);
  const Tensor idx = topk_idx.device() == Device::CPU ? topk_idx : topk_idx.to(Device::CPU);
  const int32_t* t = idx.data<int32_t>();

  auto layout = std::make_shared<EPLayout>();
  layout->tokens = N;
  layout->slots = K;
  layout->first_expert = me * per;
  // Which ranks each token goes to (once each), and the rows per rank.
  std::vector<uint8_t> goes(static_cast<size_t>(N * R), 0);
  for (int64_t i = 0; i < N * K; ++i) {
    const int32_t e = t[i];
    if (e < 0) continue;  // dropped by the capacity
    MOELAB_CHECK(e < num_experts, "EPDispatch::layout: topk_idx[", i / K, ", ", i % K, "] is ", e,
                 ", expected an expert in [0, ", num_experts, ") or -1");
    goes[static_cast<size_t>((i / K) * R + e / per)] = 1;
  }
  layout->send_rows.assign(static_cast<size_t>(R), 0);
  const int per_node = group_.options().ranks_per_node;
  std::vector<int64_t> seen(static_cast<size_t>(R), -1);  // the last token that counted each node
  for (int64_t n = 0; n < N; ++n)
    for (int p = 0; p < R; ++p) {
      if (!goes[static_cast<size_t>(n * R + p)]) continue;
      ++layout->send_rows[static_cast<size_t>(p)];
      // The group's ranks are consecutive world ranks: its nodes, counted from its first, are < R.
      const auto node = static_cast<size_t>(
          per_node > 0 ? group_.members()[static_cast<size_t>(p)] / per_node - group_.members()[0] / per_node : 0);
      if (seen[node] != n) ++traffic_.token_nodes;
      seen[node] = n;
    }
  traffic_.tokens += N;
  // Rows to rank 0 first, then rank 1, ...; within a rank in token order. The K ids go with them.
  Tensor pos_send = Tensor::empty({N, R}, DType::I32);
  int32_t* ps = pos_send.data<int32_t>();
  std::vector<int64_t> next(static_cast<size_t>(R), 0);
  for (int p = 1; p < R; ++p)
    next[static_cast<size_t>(p)] = next[static_cast<size_t>(p - 1)] + layout->send_rows[static_cast<size_t>(p - 1)];
  layout->rows_sent = next[static_cast<size_t>(R - 1)] + layout->send_rows[static_cast<size_t>(R - 1)];
  Tensor send_ids = Tensor::empty({layout->rows_sent, K}, DType::I32);
  for (int64_t n = 0; n < N; ++n)
    for (int p = 0; p < R; ++p) {
      const bool sent = goes[static_cast<size_t>(n * R + p)] != 0;
      const int64_t row = sent ? next[static_cast<size_t>(p)]++ : -1;
      ps[n * R + p] = static_cast<int32_t>(row);
      if (sent) std::copy(t + n * K, t + (n + 1) * K, send_ids.data<int32_t>() + row * K);
    }

  // The row counts, then the ids, from every rank.
  Tensor counts_out = Tensor::empty({R}, DType::I32), counts_in = Tensor::empty({R}, DType::I32);
  for (int p = 0; p < R; ++p) counts_out.data<int32_t>()[p] = static_cast<int32_t>(layout->send_rows[static_cast<size_t>(p)]);
  const std::vector<int64_t> ones(static_cast<size_t>(R), 1);
  group_.all_to_all_v(counts_out, ones, counts_in, ones);
  layout->recv_rows.resize(static_cast<size_t>(R));
  for (int p = 0; p < R; ++p) {
    layout->recv_rows[static_cast<size_t>(p)] = counts_in.data<int32_t>()[p];
    layout->rows_received += counts_in.data<int32_t>()[p];
  }
  Tensor recv_ids = Tensor::empty({layout->rows_received, K}, DType::I32);
  group_.all_to_all_v(send_ids.reshape({send_ids.numel()}), times(layout->send_rows, K),
                      recv_ids.reshape({recv_ids.numel()}), times(layout->recv_rows, K));
  // The received slots this rank owns, as local expert numbers (the rest -1), laid out by expert.
  int32_t* ri = recv_ids.data<int32_t>();
  for (int64_t i = 0; i < recv_ids.numel(); ++i)
    ri[i] = ri[i] >= layout->first_expert && ri[i] < layout->first_expert + per
                ? static_cast<int32_t>(ri[i] - layout->first_expert)
                : -1;
  layout->pos_send = to_context(ctx, pos_send);
  layout->pos_recv = ctx.alloc({layout->rows_received, K}, DType::I32);
  layout->num_tokens_per_expert = moe_dispatch_layout(ctx, to_context(ctx, recv_ids), per, layout->pos_recv);
  return layout;
}

void EPDispatch::dispatch(const Context& ctx, const DispatchLayout& layout, const Tensor& x,
                          const Tensor& expert_x) const {
  const EPLayout& l = ep_layout(layout);
  const Tensor send = ctx.alloc({l.rows_sent, x.size(1)}, x.dtype());
  moe_dispatch_forward(ctx, x, l.pos_send, send);  // one row per (token, rank)
  Tensor recv;
  if (wire_ == DType::FP8_E4M3) {
    const int64_t blocks = fp8_num_blocks(x.size(1));
    const Tensor q = ctx.alloc(send.shape(), DType::FP8_E4M3), scales = ctx.alloc({l.rows_sent, blocks}, DType::F32);
    fp8_quantize(ctx, send, q, scales);
    const Tensor recv_scales = exchange(group_, ctx, scales, l.send_rows, l.recv_rows);
    const Tensor recv_q = exchange(group_, ctx, q, l.send_rows, l.recv_rows);
    recv = ctx.alloc({l.rows_received, x.size(1)}, x.dtype());
    fp8_dequantize(ctx, recv_q, recv_scales, recv);
  } else if (wire_ == DType::BF16 && x.dtype() != DType::BF16) {
    const Tensor narrow = ctx.alloc(send.shape(), DType::BF16);
    cast(ctx, send, narrow);
    const Tensor recv_narrow = exchange(group_, ctx, narrow, l.send_rows, l.recv_rows);
    recv = ctx.alloc({l.rows_received, x.size(1)}, x.dtype());
    cast(ctx, recv_narrow, recv);
  } else {
    recv = exchange(group_, ctx, send, l.send_rows, l.recv_rows);
  }
  moe_dispatch_forward(ctx, recv, l.pos_recv, expert_x);  // fanned out to the local experts
}

void EPDispatch::combine(const Context& ctx, const DispatchLayout& layout, const Tensor& expert_y,
                         const Tensor& topk_weights, const Tensor& y) const {
  const EPLayout& l = ep_layout(layout);
  const Tensor send_w = ctx.alloc({l.rows_sent, l.slots}, topk_weights.dtype());
  moe_dispatch_forward(ctx, topk_weights, l.pos_send, send_w);
  l.recv_weights = exchange(group_, ctx, send_w, l.send_rows, l.recv_rows);
  // One weighted row per received token: its local experts' outputs summed here.
  const Tensor partial = ctx.alloc({l.rows_received, expert_y.size(1)}, expert_y.dtype());
  moe_combine_forward(ctx, expert_y, l.pos_recv, l.recv_weights, partial);
  const Tensor back = exchange(group_, ctx, partial, l.recv_rows, l.send_rows);
  moe_dispatch_backward(ctx, back, l.pos_send, y);  // y[n] = the sum over the ranks it went to
}

void EPDispatch::combine_backward(const Context& ctx, const DispatchLayout& layout, const Tensor& grad_y,
                                  const Tensor& expert_y, const Tensor& /*topk_weights: sent by combine*/,
                                  const Tensor& grad_expert_y, const Tensor& grad_topk_weights) const {
  const EPLayout& l = ep_layout(layout);
  MOELAB_CHECK(l.recv_weights.defined(), "EPDispatch::combine_backward before combine() on this layout");
  const Tensor send = ctx.alloc({l.rows_sent, grad_y.size(1)}, grad_y.dtype());
  moe_dispatch_forward(ctx, grad_y, l.pos_send, send);
  const Tensor recv = exchange(group_, ctx, send, l.send_rows, l.recv_rows);
  const Tensor grad_w = ctx.alloc({l.rows_received, l.slots}, grad_topk_weights.dtype());
  moe_combine_backward(ctx, recv, expert_y, l.pos_recv, l.recv_weights, grad_expert_y, grad_w);
  // Each slot's gradient comes from the one rank that owns its expert (0 from the others).
  const Tensor back = exchange(group_, ctx, grad_w, l.recv_rows, l.send_rows);
  moe_dispatch_backward(ctx, back, l.pos_send, grad_topk_weights);
}

void EPDispatch::dispatch_backward(const Context& ctx, const DispatchLayout& layout, const Tensor& grad_expert_x,
                                   const Tensor& grad_x) const {
  const EPLayout& l = ep_layout(layout);
  const Tensor grad_recv = ctx.alloc({l.rows_received, grad_x.size(1)}, grad_x.dtype());
  moe_dispatch_backward(ctx, grad_expert_x, l.pos_recv, grad_recv);  // summed over the local experts
  const Tensor back = exchange(group_, ctx, grad_recv, l.recv_rows, l.send_rows);
  moe_dispatch_backward(ctx, back, l.pos_send, grad_x);
}

}  // namespace moelab::dist
