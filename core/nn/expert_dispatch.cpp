// ExpertDispatch: the layout's size, and the single-process implementation over core/ops/moe_dispatch.
#include "core/nn/expert_dispatch.h"

#include <numeric>

#include "core/ops/moe_dispatch.h"

namespace moelab {

int64_t DispatchLayout::rows() const {
  return std::accumulate(num_tokens_per_expert.begin(), num_tokens_per_expert.end(), int64_t{0});
}

namespace {
// The single-process layout: every expert is local, and pos[n, k] is the row of assignment (n, k).
struct LocalDispatchLayout final : DispatchLayout {
  Tensor pos;  // i32 [N, K], -1 = not sent
};

const Tensor& pos_of(const DispatchLayout& layout) {
  const auto* local = dynamic_cast<const LocalDispatchLayout*>(&layout);
  MOELAB_CHECK(local != nullptr, "LocalExpertDispatch: the layout was made by another ExpertDispatch "
               "(layout() and the calls after it must go to the same dispatch)");
  return local->pos;
}
}  // namespace

std::shared_ptr<const DispatchLayout> LocalExpertDispatch::layout(const Context& ctx, const Tensor& topk_idx,
                                                                  int64_t num_experts) const {
  auto layout = std::make_shared<LocalDispatchLayout>();
  layout->pos = ctx.alloc(topk_idx.shape(), DType::I32);
  layout->first_expert = 0;
  layout->num_tokens_per_expert = moe_dispatch_layout(ctx, topk_idx, num_experts, layout->pos);
  return layout;
}

void LocalExpertDispatch::dispatch(const Context& ctx, const DispatchLayout& layout, const Tensor& x,
                                   const Tensor& expert_x) const {
  moe_dispatch_forward(ctx, x, pos_of(layout), expert_x);
}

void LocalExpertDispatch::combine(const Context& ctx, const DispatchLayout& layout, const Tensor& expert_y,
                                  const Tensor& topk_weights, const Tensor& y) const {
  moe_combine_forward(ctx, expert_y, pos_of(layout), topk_weights, y);
}

void LocalExpertDispatch::combine_backward(const Context& ctx, const DispatchLayout& layout, const Tensor& grad_y,
                                           const Tensor& expert_y, const Tensor& topk_weights,
                                           const Tensor& grad_expert_y, const Tensor& grad_topk_weights) const {
  moe_combine_backward(ctx, grad_y, expert_y, pos_of(layout), topk_weights, grad_expert_y, grad_topk_weights);
}

void LocalExpertDispatch::dispatch_backward(const Context& ctx, const DispatchLayout& layout,
                                            const Tensor& grad_expert_x, const Tensor& grad_x) const {
  moe_dispatch_backward(ctx, grad_expert_x, pos_of(layout), grad_x);
}

}  // namespace moelab
