#include "core/nn/embedding.h"

#include "core/ops/embedding.h"

namespace moelab {

Embedding::Embedding(ParamBuffer& params, const std::string& name, int64_t vocab, int64_t dim, double std)
    : params_(&params), vocab_(vocab), dim_(dim) {
  index_ = params.declare({name + ".weight", {vocab, dim}, Init::Normal, static_cast<float>(std), /*weight_decay=*/false});
}

void Embedding::forward(const Context& ctx, const Tensor& ids, const Tensor& out) const {
  embedding_forward(ctx, ids, weight(), out);
}

void Embedding::backward(const Context& ctx, const Tensor& ids, const Tensor& grad_out) const {
  embedding_backward(ctx, grad_out, ids, grad_weight());
}

LayerCost Embedding::cost(const CostShape&) const {
  LayerCost c;
  c.params = c.active_params = vocab_ * dim_;
  return c;
}

}  // namespace moelab
