// ExpertDispatch: the layout's sizes, the whole-layer calls over the chunks, and the
// single-process implementation over core/ops/moe_dispatch.
#include "core/nn/expert_dispatch.h"

#include <numeric>

#include "core/ops/moe_dispatch.h"

namespace moelab {

int64_t DispatchLayout::Chunk::rows() const {
  return std::accumulate(rows_per_expert.begin(), rows_per_expert.end(), int64_t{0});
}

int64_t DispatchLayout::rows() const {
  return std::accumulate(num_tokens_per_expert.begin(), num_tokens_per_expert.end(), int64_t{0});
}

Tensor DispatchLayout::chunk_rows(const Tensor& t, size_t c) const {
  MOELAB_CHECK(c < chunks.size(), "DispatchLayout: chunk ", c, " of ", chunks.size());
  return t.slice(chunks[c].row_begin, chunks[c].row_begin + chunks[c].rows());
}

void ExpertDispatch::dispatch(const Context& ctx, const DispatchLayout& layout, const Tensor& x,
                              const Tensor& expert_x) const {
  for (size_t c = 0; c < layout.chunks.size(); ++c) {
    PendingDispatch w = dispatch_chunk(ctx, layout, c, x, layout.chunk_rows(expert_x, c));
    finish(w);
  }
}

void ExpertDispatch::combine(const Context& ctx, const DispatchLayout& layout, const Tensor& expert_y,
                             const Tensor& y) const {
  for (size_t c = 0; c < layout.chunks.size(); ++c) {
    PendingDispatch w = combine_chunk(ctx, layout, c, layout.chunk_rows(expert_y, c), y);
    finish(w);
  }
}

void ExpertDispatch::combine_backward(const Context& ctx, const DispatchLayout& layout, const Tensor& grad_y,
                                      const Tensor& expert_y, const Tensor& grad_expert_y,
                                      const Tensor& grad_topk_weights) const {
  for (size_t c = 0; c < layout.chunks.size(); ++c) {
    PendingDispatch w = combine_backward_chunk(ctx, layout, c, grad_y, layout.chunk_rows(expert_y, c),
                                               layout.chunk_rows(grad_expert_y, c), grad_topk_weights);
    finish(w);
  }
}

void ExpertDispatch::dispatch_backward(const Context& ctx, const DispatchLayout& layout, const Tensor& grad_expert_x,
                                       const Tensor& grad_x) const {
  for (size_t c = 0; c < layout.chunks.size(); ++c) {
    PendingDispatch w = dispatch_backward_chunk(ctx, layout, c, layout.chunk_rows(grad_expert_x, c), grad_x);
    finish(w);
  }
}

namespace {
// The single-process layout: every expert is local, one chunk, and pos[n, k] is the row of
// assignment (n, k).
struct LocalDispatchLayout final : DispatchLayout {
  Tensor pos;           // i32 [N, K], -1 = not sent
  Tensor topk_weights;  // [N, K]
};

const LocalDispatchLayout& local_of(const DispatchLayout& layout, size_t c) {
  const auto* local = dynamic_cast<const LocalDispatchLayout*>(&layout);
  MOELAB_CHECK(local != nullptr, "LocalExpertDispatch: the layout was made by another ExpertDispatch "
               "(layout() and the calls after it must go to the same dispatch)");
  MOELAB_CHECK(c == 0, "LocalExpertDispatch: chunk ", c, " of 1");
  return *local;
}
}  // namespace

std::shared_ptr<const DispatchLayout> LocalExpertDispatch::layout(const Context& ctx, const Tensor& topk_idx,
                                                                  const Tensor& topk_weights,
                                                                  int64_t num_experts) const {
  auto layout = std::make_shared<LocalDispatchLayout>();
  layout->pos = ctx.alloc(topk_idx.shape(), DType::I32);
  layout->topk_weights = topk_weights;
  layout->first_expert = 0;
  layout->num_tokens_per_expert = moe_dispatch_layout(ctx, topk_idx, num_experts, layout->pos);
  layout->chunks = {DispatchLayout::Chunk{0, topk_idx.size(0), 0, layout->num_tokens_per_expert}};
  return layout;
}

PendingDispatch LocalExpertDispatch::dispatch_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                                    const Tensor& x, const Tensor& expert_x_c) const {
  moe_dispatch_forward(ctx, x, local_of(layout, c).pos, expert_x_c);
  return nullptr;
}

PendingDispatch LocalExpertDispatch::combine_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                                   const Tensor& expert_y_c, const Tensor& y) const {
  const LocalDispatchLayout& l = local_of(layout, c);
  moe_combine_forward(ctx, expert_y_c, l.pos, l.topk_weights, y);
  return nullptr;
}

PendingDispatch LocalExpertDispatch::combine_backward_chunk(const Context& ctx, const DispatchLayout& layout, size_t c,
                                                            const Tensor& grad_y, const Tensor& expert_y_c,
                                                            const Tensor& grad_expert_y_c,
                                                            const Tensor& grad_topk_weights) const {
  const LocalDispatchLayout& l = local_of(layout, c);
  moe_combine_backward(ctx, grad_y, expert_y_c, l.pos, l.topk_weights, grad_expert_y_c, grad_topk_weights);
  return nullptr;
}

PendingDispatch LocalExpertDispatch::dispatch_backward_chunk(const Context& ctx, const DispatchLayout& layout,
                                                             size_t c, const Tensor& grad_expert_x_c,
                                                             const Tensor& grad_x) const {
  moe_dispatch_backward(ctx, grad_expert_x_c, local_of(layout, c).pos, grad_x);
  return nullptr;
}

}  // namespace moelab
