// ExpertDispatch: how the MoE layer moves token rows to the experts and the expert outputs back
// (MODEL.md, "DeepSeekMoE": y = sum_k g_k FFN_{e_k}(u)), so that the layer never knows where its
// experts live (DESIGN.md, "Layout"). core/nn declares the interface and the single-process
// implementation below; dist/ implements the expert-parallel one (all_to_all_v over the EP group,
// each rank owning a contiguous range of experts, each token sent once per destination rank) and
// train/ plugs it in with MoE::set_dispatch.
//
// One forward/backward of a layer calls, in order (DeepEP's get_dispatch_layout/dispatch/combine):
//   layout(topk_idx)                  who goes where; the experts THIS process computes, and how
//                                     many rows each receives (EP: exchanges the counts)
//   dispatch(x) -> expert_x           the rows of every assignment to a local expert, grouped by
//                                     expert in expert order: [layout.rows(), D]
//   (the caller runs each local expert on its rows: expert_x -> expert_y)
//   combine(expert_y, topk_weights)   y[n] = sum_k topk_weights[n, k] * (output of assignment (n, k))
//   combine_backward(grad_y)          grad_expert_y, grad_topk_weights
//   dispatch_backward(grad_expert_x)  grad_x[n] = sum_k (gradient of assignment (n, k)'s row)
// topk_idx[n, k] = -1 marks an assignment that is not sent (dropped by the capacity factor): it
// contributes 0 to y and gets 0 gradient. Every output is OVERWRITTEN (activation gradients too).
// The layout lives as long as the caller keeps it (MoE::Saved does); its tensors come from the
// context's arena, so they are valid until the arena's next reset, like every saved activation.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/nn/context.h"

namespace moelab {

// What layout() decided; each implementation derives its own with the state it needs.
struct DispatchLayout {
  virtual ~DispatchLayout() = default;
  int64_t first_expert = 0;                    // local experts: [first_expert, first_expert + count)
  std::vector<int64_t> num_tokens_per_expert;  // [count] rows of expert_x per local expert, in order
  int64_t rows() const;                        // M = the sum of num_tokens_per_expert
};

class ExpertDispatch {
 public:
  virtual ~ExpertDispatch() = default;
  // topk_idx: i32 [N, K], entries in [0, num_experts) or -1 (not sent).
  virtual std::shared_ptr<const DispatchLayout> layout(const Context& ctx, const Tensor& topk_idx,
                                                       int64_t num_experts) const = 0;
  // x: [N, D] -> expert_x: [layout.rows(), D]
  virtual void dispatch(const Context& ctx, const DispatchLayout& layout, const Tensor& x,
                        const Tensor& expert_x) const = 0;
  // expert_y: [layout.rows(), D], topk_weights: [N, K] -> y: [N, D]
  virtual void combine(const Context& ctx, const DispatchLayout& layout, const Tensor& expert_y,
                       const Tensor& topk_weights, const Tensor& y) const = 0;
  // grad_y: [N, D] -> grad_expert_y: [layout.rows(), D], grad_topk_weights: [N, K]
  virtual void combine_backward(const Context& ctx, const DispatchLayout& layout, const Tensor& grad_y,
                                const Tensor& expert_y, const Tensor& topk_weights, const Tensor& grad_expert_y,
                                const Tensor& grad_topk_weights) const = 0;
  // grad_expert_x: [layout.rows(), D] -> grad_x: [N, D]
  virtual void dispatch_backward(const Context& ctx, const DispatchLayout& layout, const Tensor& grad_expert_x,
                                 const Tensor& grad_x) const = 0;
};

// One process owns every expert: the ops of core/ops/moe_dispatch.h (a counting sort of the
// assignments by expert, then row copies and a weighted gather).
class LocalExpertDispatch final : public ExpertDispatch {
 public:
  std::shared_ptr<const DispatchLayout> layout(const Context& ctx, const Tensor& topk_idx,
                                               int64_t num_experts) const override;
  void dispatch(const Context& ctx, const DispatchLayout& layout, const Tensor& x,
                const Tensor& expert_x) const override;
  void combine(const Context& ctx, const DispatchLayout& layout, const Tensor& expert_y, const Tensor& topk_weights,
               const Tensor& y) const override;
  void combine_backward(const Context& ctx, const DispatchLayout& layout, const Tensor& grad_y, const Tensor& expert_y,
                        const Tensor& topk_weights, const Tensor& grad_expert_y,
                        const Tensor& grad_topk_weights) const override;
  void dispatch_backward(const Context& ctx, const DispatchLayout& layout, const Tensor& grad_expert_x,
                         const Tensor& grad_x) const override;
};

}  // namespace moelab
