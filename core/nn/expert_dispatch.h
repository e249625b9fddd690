// ExpertDispatch: how the MoE layer moves token rows to the experts and the expert outputs back
// (MODEL.md, "DeepSeekMoE": y = sum_k g_k FFN_{e_k}(u)), so that the layer never knows where its
// experts live (DESIGN.md, "Layout"). core/nn declares the interface and the single-process
// implementation below; dist/ implements the expert-parallel one (all_to_all_v over the EP group,
// each rank owning a contiguous range of experts, each token sent once per destination rank) and
// train/ plugs it in with MoE::set_dispatch.
//
// Chunks. A layout cuts this process's tokens into chunks of consecutive tokens (one for the
// single-process dispatch; the expert-parallel one uses two halves) and lays out the expert rows
// chunk after chunk, within a chunk by local expert: expert_x = [chunk 0: expert 0's rows, expert
// 1's, ...][chunk 1: ...]. Every call below moves one chunk and returns the transfer in flight
// (PendingDispatch; null when it finished already); its wait() completes the outputs. The caller
// runs each local expert on each chunk's rows separately, so that the same arithmetic happens
// whether the chunks' transfers are waited for at once or overlapped with the other chunk's
// experts (overlap(): the two-micro-batch overlap DeepSeek-V3 uses, at the scale of one layer).
//
// One forward/backward of a layer calls, in order (DeepEP's get_dispatch_layout/dispatch/combine):
//   layout(topk_idx, topk_weights)     who goes where, with which gate weights; the experts THIS
//                                      process computes and the rows each receives per chunk (EP:
//                                      exchanges the counts, ids and weights)
//   per chunk c:
//   dispatch_chunk(c, x) -> expert_x_c the rows of every assignment of the chunk's tokens to a
//                                      local expert, grouped by expert: [chunks[c].rows(), D]
//   (the caller runs each local expert on its rows: expert_x_c -> expert_y_c)
//   combine_chunk(c, expert_y_c) -> y  y[n] = sum_k topk_weights[n, k] * (output of (n, k)) for the
//                                      chunk's tokens n
//   combine_backward_chunk(c, grad_y)  grad_expert_y_c, and grad_topk_weights of the chunk's tokens
//   dispatch_backward_chunk(c, grad_expert_x_c)  grad_x[n] = sum_k (gradient of (n, k)'s row)
// topk_idx[n, k] = -1 marks an assignment that is not sent (dropped by the capacity factor): it
// contributes 0 to y and gets 0 gradient. Every output is OVERWRITTEN (activation gradients too),
// each call writing its chunk's part. The layout lives as long as the caller keeps it (MoE::Saved
// does); its tensors come from the context's arena, so they are valid until the arena's next
// reset, like every saved activation.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/nn/context.h"

namespace moelab {

// What layout() decided; each implementation derives its own with the state it needs.
struct DispatchLayout {
  struct Chunk {
    int64_t token_begin = 0, token_end = 0;  // this process's tokens [begin, end)
    int64_t row_begin = 0;                   // its first row in expert_x
    std::vector<int64_t> rows_per_expert;    // [local experts] its rows of each, in order
    int64_t rows() const;
  };
  virtual ~DispatchLayout() = default;
  int64_t first_expert = 0;                    // local experts: [first_expert, first_expert + count)
  std::vector<int64_t> num_tokens_per_expert;  // [count] rows of each local expert over all chunks
  std::vector<Chunk> chunks;                   // at least one, in token order
  int64_t rows() const;                        // M = the sum of num_tokens_per_expert
  // t [M, ...] -> its rows of chunk c
  Tensor chunk_rows(const Tensor& t, size_t c) const;
};

// A transfer in flight; wait() blocks until it arrived and finishes the call's outputs.
class DispatchWork {
 public:
  virtual ~DispatchWork() = default;
  virtual void wait() = 0;
};
using PendingDispatch = std::unique_ptr<DispatchWork>;  // null: nothing in flight
inline void finish(PendingDispatch& work) {
  if (work) work->wait();
  work.reset();
}

class ExpertDispatch {
 public:
  virtual ~ExpertDispatch() = default;
  // topk_idx: i32 [N, K], entries in [0, num_experts) or -1 (not sent); topk_weights: [N, K] (the
  // router's dtype), read by the combines (kept by the layout).
  virtual std::shared_ptr<const DispatchLayout> layout(const Context& ctx, const Tensor& topk_idx,
                                                       const Tensor& topk_weights, int64_t num_experts) const = 0;
  // x: [N, D] -> expert_x_c: [chunks[c].rows(), D]
  virtual PendingDispatch dispatch_chunk(const Context& ctx, const DispatchLayout& layout, size_t c, const Tensor& x,
                                         const Tensor& expert_x_c) const = 0;
  // expert_y_c: [chunks[c].rows(), D] -> the chunk's rows of y: [N, D]
  virtual PendingDispatch combine_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                        const Tensor& expert_y_c, const Tensor& y) const = 0;
  // grad_y: [N, D] -> grad_expert_y_c: [chunks[c].rows(), D], the chunk's rows of grad_topk_weights [N, K]
  virtual PendingDispatch combine_backward_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                                 const Tensor& grad_y, const Tensor& expert_y_c,
                                                 const Tensor& grad_expert_y_c, const Tensor& grad_topk_weights) const = 0;
  // grad_expert_x_c: [chunks[c].rows(), D] -> the chunk's rows of grad_x: [N, D]
  virtual PendingDispatch dispatch_backward_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                                  const Tensor& grad_expert_x_c, const Tensor& grad_x) const = 0;
  // Whether the caller should keep one chunk's transfers in flight while it computes the other's.
  virtual bool overlap() const { return false; }

  // Every chunk, one after the other, each finished before the next (expert_x, expert_y and their
  // gradients: [layout.rows(), D]).
  void dispatch(const Context& ctx, const DispatchLayout& layout, const Tensor& x, const Tensor& expert_x) const;
  void combine(const Context& ctx, const DispatchLayout& layout, const Tensor& expert_y, const Tensor& y) const;
  void combine_backward(const Context& ctx, const DispatchLayout& layout, const Tensor& grad_y, const Tensor& expert_y,
                        const Tensor& grad_expert_y, const Tensor& grad_topk_weights) const;
  void dispatch_backward(const Context& ctx, const DispatchLayout& layout, const Tensor& grad_expert_x,
                         const Tensor& grad_x) const;
};

// One process owns every expert: the ops of core/ops/moe_dispatch.h (a counting sort of the
// assignments by expert, then row copies and a weighted gather), one chunk, nothing in flight.
class LocalExpertDispatch final : public ExpertDispatch {
 public:
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
};

}  // namespace moelab
