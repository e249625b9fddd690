// Expert parallelism's dispatch and combine (DESIGN.md, "Distributed"): EPDispatch implements
// core/nn's ExpertDispatch over an expert-parallel group of R ranks, rank r owning the contiguous
// experts [r E/R, (r + 1) E/R). DeepEP's semantics, which make the all-to-all as small as it can be:
//
//   layout    each token goes ONCE to every rank that owns at least one of its top-K experts, with
//             its K expert ids and gate weights (the receiver keeps those it owns); the per-rank row
//             counts, the ids and the weights are exchanged (all_to_all_v), and each rank lays out
//             the rows it received by local expert (core/ops/moe_dispatch's layout, per chunk)
//   dispatch  x rows out (one per (token, rank) pair), then fanned out to the local experts there
//   combine   on the expert's rank a token's local expert outputs are summed with their weights
//             into ONE row, which is sent back and added on the source
//   backward  mirrors both: grad_y rows go out as x did, one grad_x row per (token, rank) comes back,
//             and grad_topk_weights come back for the slots each rank owns
//
// Nodes (the group spans several emulated nodes, CommOptions::ranks_per_node): as DeepEP does
// between nodes, a token crosses to another node ONCE, to the proxy there (the rank with the
// sender's place in its node), which forwards it inside its node to the other ranks holding its
// experts (a second hop); the combine sums a node's rows on the proxy before the one row goes
// back. Within the sender's node rows go directly. So the inter-node bytes are  unique (token,
// other node) pairs x D x element size  each way, and the intra-node ones the direct pairs plus
// the forwards. On the source, row j of every buffer sent to or received from peer p is the token
// of send position j: pos_send [N, R] is the row of (token, destination), or -1, and the same
// dispatch ops gather the rows to send and add up the rows that come back (the proxies do the
// same over the rows they forward).
//
// The wire (DeepSeek-V3's choice): dispatch can send the x rows narrower than the activations, as
// bf16 or as fp8 e4m3 with one f32 scale per 128 channels (core/ops/fp8_quant.h; the scales go in a
// second all_to_all_v) on the first hop, the proxies forwarding the rounded rows in x's dtype; the
// experts then compute on the rounded rows. Everything else (combine,
// both backward exchanges) moves the activation dtype: gradients are not quantised, and the
// dispatch's gradient is the straight-through one (the rounding is taken as the identity).
//
// Chunks: the rank's tokens in two halves (core/nn/expert_dispatch.h), each with its own sends, so
// that with overlap one half's all-to-alls run on the communication thread while the other half's
// experts compute. Without overlap the same halves are computed, each transfer waited for at once:
// the results are bit for bit the same.
//
// Shapes as in core/nn/expert_dispatch.h. The indices are built on the host (the layout reads
// topk_idx there: on CUDA, one copy to the host per layer); the rows move through Comm (dist/comm.h).
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "core/nn/expert_dispatch.h"
#include "dist/comm.h"

namespace moelab::dist {

// What the layouts of this rank routed so far: tokens, and the nodes their experts live on summed
// over the tokens (a node counts once per token, this rank's own included): their ratio is the mean
// number of nodes a token reaches, what node-limited routing bounds.
// dispatch_bytes: what the dispatch calls alone sent to other ranks (rows in the wire dtype, fp8
// scales included), [intra-node, inter-node].
struct EPTraffic {
  int64_t tokens = 0, token_nodes = 0;
  int64_t dispatch_bytes[2] = {0, 0};
};

class EPDispatch final : public ExpertDispatch {
 public:
  // wire: the dtype the dispatch sends x in when that is narrower than x's: BF16 or FP8_E4M3; F32
  // (or x's own) sends x as it is. overlap: what overlap() answers (dist.overlap).
  explicit EPDispatch(Comm& group, DType wire = DType::F32, bool overlap = false);

  static constexpr int64_t kChunks = 2;

  std::shared_ptr<const DispatchLayout> layout(const Context& ctx, const Tensor& topk_idx, const Tensor& topk_weights,
                                               int64_t num_experts) const override;
  PendingDispatch dispatch_chunk(const Context& ctx, const DispatchLayout& layout, size_t c, const Tensor& x,
                                 const Tensor& expert_x_c) const override;
  PendingDispatch combine_chunk(const Context& ctx, const DispatchLayout& layout, size_t c, const Tensor& expert_y_c,
                                const Tensor& y) const override;
  PendingDispatch combine_backward_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                         const Tensor& grad_y, const Tensor& expert_y_c, const Tensor& grad_expert_y_c,
                                         const Tensor& grad_topk_weights) const override;
  PendingDispatch dispatch_backward_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                          const Tensor& grad_expert_x_c, const Tensor& grad_x) const override;
  bool overlap() const override { return overlap_; }

  Comm& group() const { return group_; }
  EPTraffic traffic() const { return traffic_; }

 private:
  // The rank of `node` that relays rows from group rank `source` (same place in its node).
  int proxy(int node, int source) const;
  // The chunk's token rows x_c [n, C] to this rank's arrivals [A, C] (both hops; the first in
  // `wire` when narrower); `after` runs when they are all here.
  PendingDispatch send_out(const Context& ctx, const DispatchLayout& layout, size_t c, const Tensor& x_c, DType wire,
                           const Tensor& arrivals, std::function<void()> after) const;
  // Per-arrival rows [A, C] back to the chunk's tokens, summed into out_c [n, C].
  PendingDispatch send_back(const Context& ctx, const DispatchLayout& layout, size_t c, const Tensor& per_arrival,
                            const Tensor& out_c) const;

  Comm& group_;
  DType wire_;
  bool overlap_;
  std::vector<int> node_;        // [R] each group rank's node, counted from the first rank's
  std::vector<int> node_first_;  // [nodes + 1] the first group rank of each node, then R
  mutable EPTraffic traffic_;
};

}  // namespace moelab::dist
