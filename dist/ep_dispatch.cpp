// EPDispatch (dist/ep_dispatch.h): the hops of each chunk, the exchanges, and the reuse of
// core/ops/moe_dispatch's gathers and weighted sums on both sides of each exchange.
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

// One hop of one chunk's rows: who sends which row to whom. Row j of every buffer sent to or
// received from peer p is input row j's send position: pos_send [in_rows, R] is the row of
// (input row, rank), or -1, so the dispatch ops gather the rows to send and add up those that
// come back the same way.
struct Hop {
  Tensor pos_send;                            // i32 [in_rows, R] (on the context's device)
  std::vector<int64_t> send_rows, recv_rows;  // [R] rows to and from each rank
  int64_t rows_sent = 0, rows_received = 0;
};

// One chunk of what layout() decided on this rank. The rows that arrive here are the first hop's
// (from the chunk's tokens' ranks: directly from this node, through this rank as the proxy from
// other nodes), then the second hop's (forwarded by this node's proxies): arrivals [A, ...].
struct EPChunk {
  Hop first, second;      // second: empty unless the group spans several nodes
  int64_t arrivals = 0;   // first.rows_received + second.rows_received
  Tensor pos_recv;        // i32 [A, K]: row of each (arrival, slot) in the chunk's expert rows, or -1
  Tensor recv_weights;    // [A, K] the gate weights the arrivals came with
};

struct EPLayout final : DispatchLayout {
  int64_t slots = 0;           // K
  bool two_hops = false;
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

int64_t total(const std::vector<int64_t>& v) {
  int64_t t = 0;
  for (int64_t x : v) t += x;
  return t;
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

// A host tensor on the context's device (in its arena).
Tensor to_context(const Context& ctx, const Tensor& host) {
  if (ctx.device() == Device::CPU) return host;
  const Tensor t = ctx.alloc(host.shape(), host.dtype());
  t.copy_from(host);
  return t;
}

// Rows of host tensors, by byte copies (ids: i32, weights: the router's dtype).
void copy_rows(const Tensor& from, int64_t from_row, const Tensor& to, int64_t to_row, int64_t rows) {
  const size_t row_bytes = static_cast<size_t>(from.size(1)) * dtype_size(from.dtype());
  std::memcpy(static_cast<char*>(to.raw()) + static_cast<size_t>(to_row) * row_bytes,
              static_cast<const char*>(from.raw()) + static_cast<size_t>(from_row) * row_bytes,
              static_cast<size_t>(rows) * row_bytes);
}

// Plans one hop for every chunk at once and moves the rows' ids and weights along it. Chunk c has
// ids[c], weights[c]: host [rows_c, K], and dest[c][j * R + p] = 1 when its row j goes to rank p.
// Fills hops[c] (pos_send on the host in pos[c]) and returns, per chunk, the ids and weights that
// arrived here, in peer order. The counts, the ids and the weights are one all_to_all_v each (per
// peer, chunk after chunk): every rank of the group must call it.
struct Arrived {
  std::vector<Tensor> ids, weights;
};
Arrived plan_hop(Comm& group, const std::vector<std::vector<uint8_t>>& dest, const std::vector<Tensor>& ids,
                 const std::vector<Tensor>& weights, std::vector<Hop>& hops, std::vector<std::vector<int32_t>>& pos) {
  const int R = group.size();
  const size_t C = dest.size();
  const int64_t K = ids[0].size(1);
  const DType wdtype = weights[0].dtype();
  std::vector<int64_t> counts_out(C * static_cast<size_t>(R), 0);  // [p][c]
  for (size_t c = 0; c < C; ++c) {
    const int64_t rows = ids[c].size(0);
    Hop& hop = hops[c];
    hop.send_rows.assign(static_cast<size_t>(R), 0);
    for (int64_t j = 0; j < rows; ++j)
      for (int p = 0; p < R; ++p) hop.send_rows[static_cast<size_t>(p)] += dest[c][static_cast<size_t>(j * R + p)];
    std::vector<int64_t> next(static_cast<size_t>(R), 0);  // rows to rank 0 first, then 1, ...; each in row order
    for (int p = 1; p < R; ++p)
      next[static_cast<size_t>(p)] = next[static_cast<size_t>(p - 1)] + hop.send_rows[static_cast<size_t>(p - 1)];
    hop.rows_sent = total(hop.send_rows);
    pos[c].assign(static_cast<size_t>(rows * R), -1);
    for (int64_t j = 0; j < rows; ++j)
      for (int p = 0; p < R; ++p)
        if (dest[c][static_cast<size_t>(j * R + p)])
          pos[c][static_cast<size_t>(j * R + p)] = static_cast<int32_t>(next[static_cast<size_t>(p)]++);
    for (int p = 0; p < R; ++p) counts_out[static_cast<size_t>(p) * C + c] = hop.send_rows[static_cast<size_t>(p)];
  }
  std::vector<int64_t> to_peer(static_cast<size_t>(R), 0);
  for (int p = 0; p < R; ++p)
    for (size_t c = 0; c < C; ++c) to_peer[static_cast<size_t>(p)] += counts_out[static_cast<size_t>(p) * C + c];
  const Tensor send_ids = Tensor::empty({total(to_peer), K}, DType::I32);
  const Tensor send_w = Tensor::empty({total(to_peer), K}, wdtype);
  int64_t row = 0;
  for (int p = 0; p < R; ++p)
    for (size_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < ids[c].size(0); ++j)
        if (dest[c][static_cast<size_t>(j * R + p)]) {
          copy_rows(ids[c], j, send_ids, row, 1);
          copy_rows(weights[c], j, send_w, row, 1);
          ++row;
        }

  const Tensor counts_t = Tensor::empty({static_cast<int64_t>(C) * R}, DType::I32);
  const Tensor counts_in = Tensor::empty({static_cast<int64_t>(C) * R}, DType::I32);
  for (size_t i = 0; i < counts_out.size(); ++i) counts_t.data<int32_t>()[i] = static_cast<int32_t>(counts_out[i]);
  const std::vector<int64_t> per_peer(static_cast<size_t>(R), static_cast<int64_t>(C));
  group.all_to_all_v(counts_t, per_peer, counts_in, per_peer);
  std::vector<int64_t> from_peer(static_cast<size_t>(R), 0);
  for (size_t c = 0; c < C; ++c) {
    hops[c].recv_rows.assign(static_cast<size_t>(R), 0);
    hops[c].rows_received = 0;
  }
  for (int p = 0; p < R; ++p)
    for (size_t c = 0; c < C; ++c) {
      const int64_t rows = counts_in.data<int32_t>()[static_cast<size_t>(p) * C + c];
      hops[c].recv_rows[static_cast<size_t>(p)] = rows;
      hops[c].rows_received += rows;
      from_peer[static_cast<size_t>(p)] += rows;
    }
  const Tensor recv_ids = Tensor::empty({total(from_peer), K}, DType::I32);
  const Tensor recv_w = Tensor::empty({total(from_peer), K}, wdtype);
  group.all_to_all_v(send_ids.reshape({send_ids.numel()}), times(to_peer, K), recv_ids.reshape({recv_ids.numel()}),
                     times(from_peer, K));
  group.all_to_all_v(send_w.reshape({send_w.numel()}), times(to_peer, K), recv_w.reshape({recv_w.numel()}),
                     times(from_peer, K));

  // Per chunk, its rows from every peer, in peer order.
  Arrived a;
  for (size_t c = 0; c < C; ++c) {
    a.ids.push_back(Tensor::empty({hops[c].rows_received, K}, DType::I32));
    a.weights.push_back(Tensor::empty({hops[c].rows_received, K}, wdtype));
  }
  std::vector<int64_t> at(C, 0);
  int64_t from = 0;
  for (int p = 0; p < R; ++p)
    for (size_t c = 0; c < C; ++c) {
      const int64_t rows = hops[c].recv_rows[static_cast<size_t>(p)];
      copy_rows(recv_ids, from, a.ids[c], at[c], rows);
      copy_rows(recv_w, from, a.weights[c], at[c], rows);
      at[c] += rows;
      from += rows;
    }
  return a;
}

Tensor pos_tensor(const Context& ctx, const std::vector<int32_t>& pos, int64_t rows, int R) {
  Tensor t = Tensor::empty({rows, R}, DType::I32);
  std::copy(pos.begin(), pos.end(), t.data<int32_t>());
  return to_context(ctx, t);
}

}  // namespace

EPDispatch::EPDispatch(Comm& group, DType wire, bool overlap) : group_(group), wire_(wire), overlap_(overlap) {
  MOELAB_CHECK(wire == DType::F32 || wire == DType::BF16 || wire == DType::FP8_E4M3, "EPDispatch: dispatch dtype ",
               dtype_name(wire), " (expected f32, bf16 or fp8_e4m3)");
  const int R = group.size(), per_node = group.options().ranks_per_node;
  for (int p = 0; p < R; ++p)  // the group's ranks are consecutive world ranks: nodes counted from its first
    node_.push_back(per_node > 0 ? group.members()[static_cast<size_t>(p)] / per_node - group.members()[0] / per_node
                                 : 0);
  for (int p = 0; p < R; ++p)
    if (p == 0 || node_[static_cast<size_t>(p)] != node_[static_cast<size_t>(p - 1)]) node_first_.push_back(p);
  node_first_.push_back(R);
}

int EPDispatch::proxy(int node, int source) const {
  const int first = node_first_[static_cast<size_t>(node)], size = node_first_[static_cast<size_t>(node) + 1] - first;
  const int local = source - node_first_[static_cast<size_t>(node_[static_cast<size_t>(source)])];
  return first + local % size;
}

std::shared_ptr<const DispatchLayout> EPDispatch::layout(const Context& ctx, const Tensor& topk_idx,
                                                         const Tensor& topk_weights, int64_t num_experts) const {
  const int R = group_.size(), me = group_.rank();
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

  auto layout = std::make_shared<EPLayout>();
  layout->slots = K;
  layout->two_hops = node_first_.size() > 2;  // more than one node
  layout->first_expert = me * per;
  layout->parts.resize(C);
  layout->chunks.resize(C);
  // Which ranks each token's experts live on, and the nodes it reaches.
  std::vector<uint8_t> goes(static_cast<size_t>(N * R), 0);
  for (int64_t i = 0; i < N * K; ++i) {
    const int32_t e = t[i];
    if (e < 0) continue;  // dropped by the capacity
    MOELAB_CHECK(e < num_experts, "EPDispatch::layout: topk_idx[", i / K, ", ", i % K, "] is ", e,
                 ", expected an expert in [0, ", num_experts, ") or -1");
    goes[static_cast<size_t>((i / K) * R + e / per)] = 1;
  }
  std::vector<int64_t> seen(node_first_.size(), -1);  // the last token that counted each node
  for (int64_t n = 0; n < N; ++n)
    for (int p = 0; p < R; ++p)
      if (goes[static_cast<size_t>(n * R + p)] && seen[static_cast<size_t>(node_[static_cast<size_t>(p)])] != n) {
        ++traffic_.token_nodes;
        seen[static_cast<size_t>(node_[static_cast<size_t>(p)])] = n;
      }
  traffic_.tokens += N;

  // First hop: a token goes once to each rank of its experts on this node, and once to the proxy
  // of each other node that holds any of them (the rank there with this rank's place in its node).
  std::vector<std::vector<uint8_t>> dest1(C);
  std::vector<Tensor> ids1, w1;
  for (size_t c = 0; c < C; ++c) {
    DispatchLayout::Chunk& ch = layout->chunks[c];
    ch.token_begin = N * static_cast<int64_t>(c) / kChunks;
    ch.token_end = N * static_cast<int64_t>(c + 1) / kChunks;
    const int64_t rows = ch.token_end - ch.token_begin;
    dest1[c].assign(static_cast<size_t>(rows * R), 0);
    for (int64_t n = ch.token_begin; n < ch.token_end; ++n)
      for (int p = 0; p < R; ++p) {
        if (!goes[static_cast<size_t>(n * R + p)]) continue;
        const int node = node_[static_cast<size_t>(p)];
        const int to = node == node_[static_cast<size_t>(me)] ? p : proxy(node, me);
        dest1[c][static_cast<size_t>((n - ch.token_begin) * R + to)] = 1;
      }
    ids1.push_back(idx.slice(ch.token_begin, ch.token_end));
    w1.push_back(weights.slice(ch.token_begin, ch.token_end));
  }
  std::vector<Hop> first(C), second(C);
  std::vector<std::vector<int32_t>> pos1(C), pos2(C);
  const Arrived got1 = plan_hop(group_, dest1, ids1, w1, first, pos1);

  // Second hop: a proxy forwards each row from another node to this node's other ranks that hold
  // any of its experts (once each); its own experts' slots it computes itself.
  Arrived got2;
  if (layout->two_hops) {
    std::vector<std::vector<uint8_t>> dest2(C);
    for (size_t c = 0; c < C; ++c) {
      const int64_t rows = first[c].rows_received;
      dest2[c].assign(static_cast<size_t>(rows * R), 0);
      int64_t j = 0;
      for (int src = 0; src < R; ++src)
        for (int64_t r = 0; r < first[c].recv_rows[static_cast<size_t>(src)]; ++r, ++j) {
          if (node_[static_cast<size_t>(src)] == node_[static_cast<size_t>(me)]) continue;  // came directly
          for (int64_t k = 0; k < K; ++k) {
            const int32_t e = got1.ids[c].data<int32_t>()[j * K + k];
            const int q = e < 0 ? me : static_cast<int>(e / per);
            if (q != me && node_[static_cast<size_t>(q)] == node_[static_cast<size_t>(me)])  // other nodes' proxies have those
              dest2[c][static_cast<size_t>(j * R + q)] = 1;
          }
        }
    }
    got2 = plan_hop(group_, dest2, got1.ids, got1.weights, second, pos2);
  }

  // The arrivals: their slots this rank owns as local expert numbers (the rest -1), laid out by
  // expert, the chunks one after the other.
  int64_t row_begin = 0;
  for (size_t c = 0; c < C; ++c) {
    EPChunk& part = layout->parts[c];
    const DispatchLayout::Chunk& ch = layout->chunks[c];
    part.first = first[c];
    part.first.pos_send = pos_tensor(ctx, pos1[c], ch.token_end - ch.token_begin, R);
    part.arrivals = first[c].rows_received;
    if (layout->two_hops) {
      part.second = second[c];
      part.second.pos_send = pos_tensor(ctx, pos2[c], first[c].rows_received, R);
      part.arrivals += second[c].rows_received;
    }
    const Tensor ids = Tensor::empty({part.arrivals, K}, DType::I32), w = Tensor::empty({part.arrivals, K}, weights.dtype());
    copy_rows(got1.ids[c], 0, ids, 0, first[c].rows_received);
    copy_rows(got1.weights[c], 0, w, 0, first[c].rows_received);
    if (layout->two_hops) {
      copy_rows(got2.ids[c], 0, ids, first[c].rows_received, second[c].rows_received);
      copy_rows(got2.weights[c], 0, w, first[c].rows_received, second[c].rows_received);
    }
    int32_t* ri = ids.data<int32_t>();
    for (int64_t i = 0; i < ids.numel(); ++i)
      ri[i] = ri[i] >= layout->first_expert && ri[i] < layout->first_expert + per
                  ? static_cast<int32_t>(ri[i] - layout->first_expert)
                  : -1;
    part.recv_weights = to_context(ctx, w);
    part.pos_recv = ctx.alloc({part.arrivals, K}, DType::I32);
    layout->chunks[c].rows_per_expert = moe_dispatch_layout(ctx, to_context(ctx, ids), per, part.pos_recv);
    layout->chunks[c].row_begin = row_begin;
    row_begin += layout->chunks[c].rows();
  }
  layout->num_tokens_per_expert.assign(static_cast<size_t>(per), 0);
  for (const DispatchLayout::Chunk& ch : layout->chunks)
    for (size_t i = 0; i < ch.rows_per_expert.size(); ++i) layout->num_tokens_per_expert[i] += ch.rows_per_expert[i];
  return layout;
}

// The chunk's token rows x_c [n, C] to the arrivals [A, C] (the first hop in `wire` when that is
// narrower, the proxies' forwards in x's dtype); `after` runs once they are all here.
PendingDispatch EPDispatch::send_out(const Context& ctx, const DispatchLayout& layout, size_t c, const Tensor& x_c,
                                     DType wire, const Tensor& arrivals, std::function<void()> after) const {
  const EPLayout& el = ep_layout(layout, c);
  const EPChunk& l = el.parts[c];
  const int64_t D = x_c.size(1);
  const Tensor send = ctx.alloc({l.first.rows_sent, D}, x_c.dtype());
  moe_dispatch_forward(ctx, x_c, l.first.pos_send, send);  // one row per (token, destination)
  const Tensor recv = arrivals.slice(0, l.first.rows_received);
  auto work = std::make_unique<EPWork>();
  Tensor on_wire = send, wire_recv = recv;
  std::function<void()> widen;
  if (wire == DType::FP8_E4M3) {
    const int64_t blocks = fp8_num_blocks(D);
    const Tensor scales = ctx.alloc({l.first.rows_sent, blocks}, DType::F32);
    const Tensor recv_scales = ctx.alloc({l.first.rows_received, blocks}, DType::F32);
    on_wire = ctx.alloc(send.shape(), DType::FP8_E4M3);
    wire_recv = ctx.alloc(recv.shape(), DType::FP8_E4M3);
    fp8_quantize(ctx, send, on_wire, scales);
    work->transfers.push_back(exchange_async(group_, scales, l.first.send_rows, recv_scales, l.first.recv_rows));
    widen = [&ctx, wire_recv, recv_scales, recv] { fp8_dequantize(ctx, wire_recv, recv_scales, recv); };
  } else if (wire == DType::BF16 && x_c.dtype() != DType::BF16) {
    on_wire = ctx.alloc(send.shape(), DType::BF16);
    wire_recv = ctx.alloc(recv.shape(), DType::BF16);
    cast(ctx, send, on_wire);
    widen = [&ctx, wire_recv, recv] { cast(ctx, wire_recv, recv); };
  }
  work->transfers.push_back(exchange_async(group_, on_wire, l.first.send_rows, wire_recv, l.first.recv_rows));
  work->then = [this, &ctx, &l, two = el.two_hops, widen = std::move(widen), recv, arrivals, after = std::move(after)] {
    if (widen) widen();
    if (two) {  // the proxies forward what came from other nodes
      const Tensor send2 = ctx.alloc({l.second.rows_sent, recv.size(1)}, recv.dtype());
      moe_dispatch_forward(ctx, recv, l.second.pos_send, send2);
      exchange_async(group_, send2, l.second.send_rows, arrivals.slice(l.first.rows_received, l.arrivals),
                     l.second.recv_rows)
          ->wait();
    }
    after();
  };
  return work;
}

// Per-arrival rows [A, C] back to the chunk's tokens, summed into out_c [n, C]: the second hop's
// rows to their proxies (added there to the proxy's own row), then every first-hop row to its
// source, where a token's rows from its destinations add up.
PendingDispatch EPDispatch::send_back(const Context& ctx, const DispatchLayout& layout, size_t c,
                                      const Tensor& per_arrival, const Tensor& out_c) const {
  const EPLayout& el = ep_layout(layout, c);
  const EPChunk& l = el.parts[c];
  const int64_t cols = per_arrival.size(1);
  auto work = std::make_unique<EPWork>();
  auto to_sources = [this, &ctx, &l, cols, out_c](const Tensor& first_rows) {
    const Tensor back = ctx.alloc({l.first.rows_sent, cols}, first_rows.dtype());
    WorkHandle w = exchange_async(group_, first_rows, l.first.recv_rows, back, l.first.send_rows);
    auto sum = [&ctx, &l, back, out_c] { moe_dispatch_backward(ctx, back, l.first.pos_send, out_c); };
    return std::make_pair(std::move(w), std::function<void()>(sum));
  };
  if (!el.two_hops) {
    auto [w, sum] = to_sources(per_arrival);
    work->transfers.push_back(std::move(w));
    work->then = std::move(sum);
    return work;
  }
  const Tensor back2 = ctx.alloc({l.second.rows_sent, cols}, per_arrival.dtype());
  work->transfers.push_back(exchange_async(group_, per_arrival.slice(l.first.rows_received, l.arrivals),
                                           l.second.recv_rows, back2, l.second.send_rows));
  work->then = [&ctx, &l, cols, per_arrival, back2, to_sources] {
    const Tensor forwarded = ctx.alloc({l.first.rows_received, cols}, per_arrival.dtype());
    moe_dispatch_backward(ctx, back2, l.second.pos_send, forwarded);  // per proxied row: its node's sum
    const Tensor first_rows = ctx.alloc({l.first.rows_received, cols}, per_arrival.dtype());
    add(ctx, per_arrival.slice(0, l.first.rows_received), forwarded, first_rows);
    auto [w, sum] = to_sources(first_rows);
    w->wait();
    sum();
  };
  return work;
}

PendingDispatch EPDispatch::dispatch_chunk(const Context& ctx, const DispatchLayout& layout, size_t c, const Tensor& x,
                                           const Tensor& expert_x_c) const {
  const EPChunk& l = ep_layout(layout, c).parts[c];
  const DispatchLayout::Chunk& ch = layout.chunks[c];
  const int64_t D = x.size(1);
  // What the dispatch alone sends to other ranks: the first hop in the wire dtype (fp8: with its
  // scales), the proxies' forwards in x's.
  const bool narrow = wire_ == DType::FP8_E4M3 || (wire_ == DType::BF16 && x.dtype() != DType::BF16);
  const int64_t wire_row = narrow ? D * static_cast<int64_t>(dtype_size(wire_)) +
                                        (wire_ == DType::FP8_E4M3 ? 4 * fp8_num_blocks(D) : 0)
                                  : D * static_cast<int64_t>(dtype_size(x.dtype()));
  const int me = group_.rank();
  for (int p = 0; p < group_.size(); ++p) {
    if (p == me) continue;
    const auto k = static_cast<int>(group_.link_class(me, p));
    traffic_.dispatch_bytes[k] += l.first.send_rows[static_cast<size_t>(p)] * wire_row;
    if (!l.second.send_rows.empty())
      traffic_.dispatch_bytes[k] += l.second.send_rows[static_cast<size_t>(p)] * D * static_cast<int64_t>(dtype_size(x.dtype()));
  }
  const Tensor arrivals = ctx.alloc({l.arrivals, D}, x.dtype());
  return send_out(ctx, layout, c, x.slice(ch.token_begin, ch.token_end), wire_, arrivals,
                  [&ctx, &l, arrivals, expert_x_c] {
                    moe_dispatch_forward(ctx, arrivals, l.pos_recv, expert_x_c);  // fanned out to the local experts
                  });
}

PendingDispatch EPDispatch::combine_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                          const Tensor& expert_y_c, const Tensor& y) const {
  const EPChunk& l = ep_layout(layout, c).parts[c];
  const DispatchLayout::Chunk& ch = layout.chunks[c];
  // One weighted row per arrival: its local experts' outputs summed here.
  const Tensor partial = ctx.alloc({l.arrivals, expert_y_c.size(1)}, expert_y_c.dtype());
  moe_combine_forward(ctx, expert_y_c, l.pos_recv, l.recv_weights, partial);
  return send_back(ctx, layout, c, partial, y.slice(ch.token_begin, ch.token_end));
}

PendingDispatch EPDispatch::combine_backward_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                                   const Tensor& grad_y, const Tensor& expert_y_c,
                                                   const Tensor& grad_expert_y_c,
                                                   const Tensor& grad_topk_weights) const {
  const EPLayout& el = ep_layout(layout, c);
  const EPChunk& l = el.parts[c];
  const DispatchLayout::Chunk& ch = layout.chunks[c];
  const Tensor arrivals = ctx.alloc({l.arrivals, grad_y.size(1)}, grad_y.dtype());
  const Tensor gw_c = grad_topk_weights.slice(ch.token_begin, ch.token_end);
  return send_out(ctx, layout, c, grad_y.slice(ch.token_begin, ch.token_end), DType::F32, arrivals,
                  [this, &ctx, &layout, c, &l, K = el.slots, arrivals, expert_y_c, grad_expert_y_c, gw_c] {
                    const Tensor grad_w = ctx.alloc({l.arrivals, K}, gw_c.dtype());
                    moe_combine_backward(ctx, arrivals, expert_y_c, l.pos_recv, l.recv_weights, grad_expert_y_c,
                                         grad_w);
                    // Each slot's gradient comes from the one rank that owns its expert (0 from the
                    // others): a small exchange, waited for here.
                    PendingDispatch back = send_back(ctx, layout, c, grad_w, gw_c);
                    finish(back);
                  });
}

PendingDispatch EPDispatch::dispatch_backward_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                                    const Tensor& grad_expert_x_c, const Tensor& grad_x) const {
  const EPChunk& l = ep_layout(layout, c).parts[c];
  const DispatchLayout::Chunk& ch = layout.chunks[c];
  const Tensor grad_arrivals = ctx.alloc({l.arrivals, grad_x.size(1)}, grad_x.dtype());
  moe_dispatch_backward(ctx, grad_expert_x_c, l.pos_recv, grad_arrivals);  // summed over the local experts
  return send_back(ctx, layout, c, grad_arrivals, grad_x.slice(ch.token_begin, ch.token_end));
}

}  // namespace moelab::dist
