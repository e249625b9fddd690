// EPDispatch (dist/ep_dispatch.h): the send positions and counts per chunk, the exchanges, and the
// reuse of core/ops/moe_dispatch's gathers and weighted sums on both sides of each exchange.
#include "dist/ep_dispatch.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "core/ops/elementwise.h"
#include "core/ops/fp8_quant.h"
#include "core/ops/moe_dispatch.h"

namespace moelab::dist {

namespace {

// One chunk of what layout() decided on this rank.
struct EPChunk {
  Tensor pos_send;                           // i32 [n, R]: row of (token, rank) in what is sent, or -1
  std::vector<int64_t> send_rows, recv_rows; // [R] rows to and from each rank
  int64_t rows_sent = 0, rows_received = 0;  // S, Rr
  Tensor pos_recv;                           // i32 [Rr, K]: row of each received (row, slot) in the chunk's expert rows, or -1
  Tensor recv_weights;                       // [Rr, K] the gate weights the received rows came with
};

struct EPLayout final : DispatchLayout {
  int64_t slots = 0;  // K
  std::vector<EPChunk> parts;  // one per chunk
};

const EPLayout& ep_layout(const DispatchLayout& layout, size_t c) {
  const auto* ep = dynamic_cast<const EPLayout*>(&layout);
  MOELAB_CHECK(ep != nullptr, "EPDispatch: the layout was made by another ExpertDispatch (layout() and the calls "
               "after it must go to the same dispatch)");
  MOELAB_CHECK(c < ep->parts.size(), "EPDispatch: chunk ", c, " of ", ep->parts.size());
  return *ep;
}

std::vector<int64_t> times(const std::vector<int64_t>& rows, int64_t cols) {
  std::vector<int64_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = rows[i] * cols;
  return out;
}

// A transfer in flight: the collectives, then what finishes the call on the caller's thread.
struct EPWork final : DispatchWork {
  std::vector<WorkHandle> transfers;
  std::function<void()> then;
  void wait() override {
    for (WorkHandle& w : transfers) w->wait();
    if (then) then();
  }
};

// Starts sending rows [sum out_rows, C] to the peers, out_rows[p] of them to rank p, in rank order,
// into `recv` [sum in_rows, C].
WorkHandle exchange_async(Comm& group, const Tensor& send, const std::vector<int64_t>& out_rows, const Tensor& recv,
                          const std::vector<int64_t>& in_rows) {
  const int64_t cols = send.size(1);
  return group.all_to_all_v_async(send.reshape({send.numel()}), times(out_rows, cols), recv.reshape({recv.numel()}),
                                  times(in_rows, cols));
}

int64_t total(const std::vector<int64_t>& v) {
  int64_t t = 0;
  for (int64_t x : v) t += x;
  return t;
}

// A host tensor on the context's device (in its arena).
Tensor to_context(const Context& ctx, const Tensor& host) {
  if (ctx.device() == Device::CPU) return host;
  const Tensor t = ctx.alloc(host.shape(), host.dtype());
  t.copy_from(host);
  return t;
}

}  // namespace

EPDispatch::EPDispatch(Comm& group, DType wire, bool overlap) : group_(group), wire_(wire), overlap_(overlap) {
  MOELAB_CHECK(wire == DType::F32 || wire == DType::BF16 || wire == DType::FP8_E4M3, "EPDispatch: dispatch dtype ",
               dtype_name(wire), " (expected f32, bf16 or fp8_e4m3)");
}

std::shared_ptr<const DispatchLayout> EPDispatch::layout(const Context& ctx, const Tensor& topk_idx,
                                                         const Tensor& topk_weights, int64_t num_experts) const {
  const int R = group_.size();
  const auto C = static_cast<size_t>(kChunks);
  MOELAB_CHECK(topk_idx.ndim() == 2 && topk_idx.dtype() == DType::I32, "EPDispatch::layout: topk_idx is ",
               topk_idx.str(), ", expected i32 [N, K]");
  MOELAB_CHECK(topk_weights.shape() == topk_idx.shape() && topk_weights.dtype() == ctx.stat_dtype(),
               "EPDispatch::layout: topk_weights is ", topk_weights.str(), ", expected ", dtype_name(ctx.stat_dtype()),
               " ", topk_idx.shape().str());
  MOELAB_CHECK(num_experts % R == 0, "expert parallelism: ", num_experts, " experts do not split evenly over the ", R,
               " ranks of the expert-parallel group");
  const int64_t per = num_experts / R, N = topk_idx.size(0), K = topk_idx.size(1);
  MOELAB_CHECK(N >= kChunks, "EPDispatch::layout: ", N, " tokens on this rank; the dispatch cuts them into ", kChunks,
               " chunks");
  const Tensor idx = topk_idx.device() == Device::CPU ? topk_idx : topk_idx.to(Device::CPU);
  const Tensor weights = topk_weights.device() == Device::CPU ? topk_weights : topk_weights.to(Device::CPU);
  const int32_t* t = idx.data<int32_t>();
  const size_t wsize = dtype_size(weights.dtype());

  auto layout = std::make_shared<EPLayout>();
  layout->slots = K;
  layout->first_expert = group_.rank() * per;
  layout->parts.resize(C);
  layout->chunks.resize(C);
  // Which ranks each token goes to (once each), and the nodes it reaches.
  std::vector<uint8_t> goes(static_cast<size_t>(N * R), 0);
  for (int64_t i = 0; i < N * K; ++i) {
    const int32_t e = t[i];
    if (e < 0) continue;  // dropped by the capacity
    MOELAB_CHECK(e < num_experts, "EPDispatch::layout: topk_idx[", i / K, ", ", i % K, "] is ", e,
                 ", expected an expert in [0, ", num_experts, ") or -1");
    goes[static_cast<size_t>((i / K) * R + e / per)] = 1;
  }
  const int per_node = group_.options().ranks_per_node;
  std::vector<int64_t> seen(static_cast<size_t>(R), -1);  // the last token that counted each node
  for (int64_t n = 0; n < N; ++n)
    for (int p = 0; p < R; ++p) {
      if (!goes[static_cast<size_t>(n * R + p)]) continue;
      // The group's ranks are consecutive world ranks: its nodes, counted from its first, are < R.
      const auto node = static_cast<size_t>(
          per_node > 0 ? group_.members()[static_cast<size_t>(p)] / per_node - group_.members()[0] / per_node : 0);
      if (seen[node] != n) ++traffic_.token_nodes;
      seen[node] = n;
    }
  traffic_.tokens += N;

  // Per chunk: the rows to each rank (to rank 0 first, then 1, ...; within a rank in token order)
  // and their positions. The ids and weights go out in ONE exchange each, per peer chunk after chunk.
  std::vector<int64_t> counts_out(C * static_cast<size_t>(R), 0);  // [p][c]
  std::vector<std::vector<int32_t>> pos_host(C);
  for (size_t c = 0; c < C; ++c) {
    DispatchLayout::Chunk& ch = layout->chunks[c];
    ch.token_begin = N * static_cast<int64_t>(c) / kChunks;
    ch.token_end = N * static_cast<int64_t>(c + 1) / kChunks;
    EPChunk& part = layout->parts[c];
    part.send_rows.assign(static_cast<size_t>(R), 0);
    for (int64_t n = ch.token_begin; n < ch.token_end; ++n)
      for (int p = 0; p < R; ++p) part.send_rows[static_cast<size_t>(p)] += goes[static_cast<size_t>(n * R + p)];
    std::vector<int64_t> next(static_cast<size_t>(R), 0);
    for (int p = 1; p < R; ++p)
      next[static_cast<size_t>(p)] = next[static_cast<size_t>(p - 1)] + part.send_rows[static_cast<size_t>(p - 1)];
    part.rows_sent = total(part.send_rows);
    std::vector<int32_t>& ps = pos_host[c];
    ps.assign(static_cast<size_t>((ch.token_end - ch.token_begin) * R), -1);
    for (int64_t n = ch.token_begin; n < ch.token_end; ++n)
      for (int p = 0; p < R; ++p)
        if (goes[static_cast<size_t>(n * R + p)])
          ps[static_cast<size_t>((n - ch.token_begin) * R + p)] = static_cast<int32_t>(next[static_cast<size_t>(p)]++);
    for (int p = 0; p < R; ++p) counts_out[static_cast<size_t>(p) * C + c] = part.send_rows[static_cast<size_t>(p)];
  }
  // Each peer's block of ids and weights: its chunk 0 rows, then its chunk 1 rows.
  std::vector<int64_t> to_peer(static_cast<size_t>(R), 0);
  for (int p = 0; p < R; ++p)
    for (size_t c = 0; c < C; ++c) to_peer[static_cast<size_t>(p)] += counts_out[static_cast<size_t>(p) * C + c];
  const int64_t sent = total(to_peer);
  Tensor send_ids = Tensor::empty({sent, K}, DType::I32), send_w = Tensor::empty({sent, K}, weights.dtype());
  {
    int64_t row = 0;
    for (int p = 0; p < R; ++p)
      for (size_t c = 0; c < C; ++c) {
        const DispatchLayout::Chunk& ch = layout->chunks[c];
        for (int64_t n = ch.token_begin; n < ch.token_end; ++n) {
          if (!goes[static_cast<size_t>(n * R + p)]) continue;
          std::copy(t + n * K, t + (n + 1) * K, send_ids.data<int32_t>() + row * K);
          std::memcpy(static_cast<char*>(send_w.raw()) + row * K * wsize,
                      static_cast<const char*>(weights.raw()) + n * K * wsize, K * wsize);
          ++row;
        }
      }
  }

  // The row counts, then the ids and weights, from every rank.
  Tensor counts_t = Tensor::empty({static_cast<int64_t>(C) * R}, DType::I32);
  Tensor counts_in = Tensor::empty({static_cast<int64_t>(C) * R}, DType::I32);
  for (size_t i = 0; i < counts_out.size(); ++i) counts_t.data<int32_t>()[i] = static_cast<int32_t>(counts_out[i]);
  const std::vector<int64_t> chunk_counts(static_cast<size_t>(R), static_cast<int64_t>(C));
  group_.all_to_all_v(counts_t, chunk_counts, counts_in, chunk_counts);
  std::vector<int64_t> from_peer(static_cast<size_t>(R), 0);
  for (int p = 0; p < R; ++p)
    for (size_t c = 0; c < C; ++c) {
      const int64_t rows = counts_in.data<int32_t>()[static_cast<size_t>(p) * C + c];
      layout->parts[c].recv_rows.push_back(rows);
      layout->parts[c].rows_received += rows;
      from_peer[static_cast<size_t>(p)] += rows;
    }
  Tensor recv_ids = Tensor::empty({total(from_peer), K}, DType::I32);
  Tensor recv_w = Tensor::empty({total(from_peer), K}, weights.dtype());
  group_.all_to_all_v(send_ids.reshape({send_ids.numel()}), times(to_peer, K), recv_ids.reshape({recv_ids.numel()}),
                      times(from_peer, K));
  group_.all_to_all_v(send_w.reshape({send_w.numel()}), times(to_peer, K), recv_w.reshape({recv_w.numel()}),
                      times(from_peer, K));

  // Per chunk, the received rows in peer order; the slots this rank owns as local expert numbers
  // (the rest -1), laid out by expert, the chunks one after the other.
  int64_t row_begin = 0;
  for (size_t c = 0; c < C; ++c) {
    EPChunk& part = layout->parts[c];
    Tensor ids = Tensor::empty({part.rows_received, K}, DType::I32);
    Tensor w = Tensor::empty({part.rows_received, K}, weights.dtype());
    int64_t at = 0, from = 0;  // row in this chunk's arrays, in the received block
    for (int p = 0; p < R; ++p) {
      int64_t skip = 0;  // this peer's rows of earlier chunks
      for (size_t c2 = 0; c2 < c; ++c2) skip += layout->parts[c2].recv_rows[static_cast<size_t>(p)];
      const int64_t rows = part.recv_rows[static_cast<size_t>(p)];
      std::copy(recv_ids.data<int32_t>() + (from + skip) * K, recv_ids.data<int32_t>() + (from + skip + rows) * K,
                ids.data<int32_t>() + at * K);
      std::memcpy(static_cast<char*>(w.raw()) + at * K * wsize,
                  static_cast<const char*>(recv_w.raw()) + (from + skip) * K * wsize, rows * K * wsize);
      at += rows;
      from += from_peer[static_cast<size_t>(p)];
    }
    int32_t* ri = ids.data<int32_t>();
    for (int64_t i = 0; i < ids.numel(); ++i)
      ri[i] = ri[i] >= layout->first_expert && ri[i] < layout->first_expert + per
                  ? static_cast<int32_t>(ri[i] - layout->first_expert)
                  : -1;
    const DispatchLayout::Chunk& ch = layout->chunks[c];
    Tensor pos_send = Tensor::empty({ch.token_end - ch.token_begin, R}, DType::I32);
    std::copy(pos_host[c].begin(), pos_host[c].end(), pos_send.data<int32_t>());
    part.pos_send = to_context(ctx, pos_send);
    part.recv_weights = to_context(ctx, w);
    part.pos_recv = ctx.alloc({part.rows_received, K}, DType::I32);
    layout->chunks[c].rows_per_expert = moe_dispatch_layout(ctx, to_context(ctx, ids), per, part.pos_recv);
    layout->chunks[c].row_begin = row_begin;
    row_begin += layout->chunks[c].rows();
  }
  layout->num_tokens_per_expert.assign(static_cast<size_t>(per), 0);
  for (const DispatchLayout::Chunk& ch : layout->chunks)
    for (size_t i = 0; i < ch.rows_per_expert.size(); ++i) layout->num_tokens_per_expert[i] += ch.rows_per_expert[i];
  return layout;
}

PendingDispatch EPDispatch::dispatch_chunk(const Context& ctx, const DispatchLayout& layout, size_t c, const Tensor& x,
                                           const Tensor& expert_x_c) const {
  const EPChunk& l = ep_layout(layout, c).parts[c];
  const DispatchLayout::Chunk& ch = layout.chunks[c];
  const int64_t D = x.size(1);
  const Tensor send = ctx.alloc({l.rows_sent, D}, x.dtype());
  moe_dispatch_forward(ctx, x.slice(ch.token_begin, ch.token_end), l.pos_send, send);  // one row per (token, rank)
  auto work = std::make_unique<EPWork>();
  const Tensor recv = ctx.alloc({l.rows_received, D}, x.dtype());
  Tensor wire = send, wire_recv = recv;
  if (wire_ == DType::FP8_E4M3) {
    const int64_t blocks = fp8_num_blocks(D);
    const Tensor scales = ctx.alloc({l.rows_sent, blocks}, DType::F32);
    const Tensor recv_scales = ctx.alloc({l.rows_received, blocks}, DType::F32);
    wire = ctx.alloc(send.shape(), DType::FP8_E4M3);
    wire_recv = ctx.alloc(recv.shape(), DType::FP8_E4M3);
    fp8_quantize(ctx, send, wire, scales);
    work->transfers.push_back(exchange_async(group_, scales, l.send_rows, recv_scales, l.recv_rows));
    work->then = [&ctx, wire_recv, recv_scales, recv] { fp8_dequantize(ctx, wire_recv, recv_scales, recv); };
  } else if (wire_ == DType::BF16 && x.dtype() != DType::BF16) {
    wire = ctx.alloc(send.shape(), DType::BF16);
    wire_recv = ctx.alloc(recv.shape(), DType::BF16);
    cast(ctx, send, wire);
    work->then = [&ctx, wire_recv, recv] { cast(ctx, wire_recv, recv); };
  }
  work->transfers.push_back(exchange_async(group_, wire, l.send_rows, wire_recv, l.recv_rows));
  const int64_t row_bytes = D * static_cast<int64_t>(dtype_size(wire.dtype())) +
                            (wire_ == DType::FP8_E4M3 ? 4 * fp8_num_blocks(D) : 0);
  const int me = group_.rank();
  for (int p = 0; p < group_.size(); ++p)
    if (p != me)
      traffic_.dispatch_bytes[static_cast<int>(group_.link_class(me, p))] += l.send_rows[static_cast<size_t>(p)] * row_bytes;
  work->then = [&ctx, widen = std::move(work->then), recv, pos = l.pos_recv, expert_x_c] {
    if (widen) widen();
    moe_dispatch_forward(ctx, recv, pos, expert_x_c);  // fanned out to the local experts
  };
  return work;
}

PendingDispatch EPDispatch::combine_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                          const Tensor& expert_y_c, const Tensor& y) const {
  const EPChunk& l = ep_layout(layout, c).parts[c];
  const DispatchLayout::Chunk& ch = layout.chunks[c];
  const int64_t D = expert_y_c.size(1);
  // One weighted row per received token: its local experts' outputs summed here.
  const Tensor partial = ctx.alloc({l.rows_received, D}, expert_y_c.dtype());
  moe_combine_forward(ctx, expert_y_c, l.pos_recv, l.recv_weights, partial);
  const Tensor back = ctx.alloc({l.rows_sent, D}, expert_y_c.dtype());
  auto work = std::make_unique<EPWork>();
  work->transfers.push_back(exchange_async(group_, partial, l.recv_rows, back, l.send_rows));
  work->then = [&ctx, back, pos = l.pos_send, y_c = y.slice(ch.token_begin, ch.token_end)] {
    moe_dispatch_backward(ctx, back, pos, y_c);  // y[n] = the sum over the ranks it went to
  };
  return work;
}

PendingDispatch EPDispatch::combine_backward_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                                   const Tensor& grad_y, const Tensor& expert_y_c,
                                                   const Tensor& grad_expert_y_c,
                                                   const Tensor& grad_topk_weights) const {
  const EPLayout& el = ep_layout(layout, c);
  const EPChunk& l = el.parts[c];
  const DispatchLayout::Chunk& ch = layout.chunks[c];
  const int64_t D = grad_y.size(1);
  const Tensor send = ctx.alloc({l.rows_sent, D}, grad_y.dtype());
  moe_dispatch_forward(ctx, grad_y.slice(ch.token_begin, ch.token_end), l.pos_send, send);
  const Tensor recv = ctx.alloc({l.rows_received, D}, grad_y.dtype());
  auto work = std::make_unique<EPWork>();
  work->transfers.push_back(exchange_async(group_, send, l.send_rows, recv, l.recv_rows));
  work->then = [this, &ctx, &l, K = el.slots, recv, expert_y_c, grad_expert_y_c,
                gw_c = grad_topk_weights.slice(ch.token_begin, ch.token_end)] {
    const Tensor grad_w = ctx.alloc({l.rows_received, K}, gw_c.dtype());
    moe_combine_backward(ctx, recv, expert_y_c, l.pos_recv, l.recv_weights, grad_expert_y_c, grad_w);
    // Each slot's gradient comes from the one rank that owns its expert (0 from the others): a
    // small exchange, waited for here.
    const Tensor back = ctx.alloc({l.rows_sent, K}, gw_c.dtype());
    exchange_async(group_, grad_w, l.recv_rows, back, l.send_rows)->wait();
    moe_dispatch_backward(ctx, back, l.pos_send, gw_c);
  };
  return work;
}

PendingDispatch EPDispatch::dispatch_backward_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                                    const Tensor& grad_expert_x_c, const Tensor& grad_x) const {
  const EPChunk& l = ep_layout(layout, c).parts[c];
  const DispatchLayout::Chunk& ch = layout.chunks[c];
  const int64_t D = grad_x.size(1);
  const Tensor grad_recv = ctx.alloc({l.rows_received, D}, grad_x.dtype());
  moe_dispatch_backward(ctx, grad_expert_x_c, l.pos_recv, grad_recv);  // summed over the local experts
  const Tensor back = ctx.alloc({l.rows_sent, D}, grad_x.dtype());
  auto work = std::make_unique<EPWork>();
  work->transfers.push_back(exchange_async(group_, grad_recv, l.recv_rows, back, l.send_rows));
  work->then = [&ctx, back, pos = l.pos_send, gx_c = grad_x.slice(ch.token_begin, ch.token_end)] {
    moe_dispatch_backward(ctx, back, pos, gx_c);
  };
  return work;
}

}  // namespace moelab::dist
