#include "train/optimizer.h"

namespace moelab {

AdamW::AdamW(const ParamBuffer& params, const AdamWConfig& cfg) : params_(&params), cfg_(cfg) {
  const Tensor& flat = params.flat_params();
  MOELAB_CHECK(flat.defined(), "AdamW: the parameter buffer is not allocated");
  m_ = Tensor::zeros(flat.shape(), flat.dtype(), flat.device());
  v_ = Tensor::zeros(flat.shape(), flat.dtype(), flat.device());
}

void AdamW::restore(const Tensor& m, const Tensor& v, int64_t step) {
  MOELAB_CHECK(step >= 0, "AdamW::restore: step ", step, " must be >= 0");
  m_.copy_from(m);  // copy_from checks shape and dtype
  v_.copy_from(v);
  step_ = step;
}

void AdamW::step(const Exec& ex, double lr) {
  ++step_;
  for (size_t i = 0; i < params_->entries().size(); ++i) {
    const ParamBuffer::Entry& e = params_->entries()[i];
    AdamWParams hp;
    hp.lr = lr;
    hp.beta1 = cfg_.beta1;
    hp.beta2 = cfg_.beta2;
    hp.eps = cfg_.eps;
    hp.weight_decay = e.spec.weight_decay ? cfg_.weight_decay : 0.0;
    hp.step = step_;
    // m and v share the flat layout: the same element range as the parameter.
    const Tensor m = m_.slice(e.offset, e.offset + e.spec.shape.numel());
    const Tensor v = v_.slice(e.offset, e.offset + e.spec.shape.numel());
    const Tensor p = params_->param(i), g = params_->grad(i);
    // In mixed precision the same pass refreshes the parameter's bf16 compute copy.
    const Tensor copy = params_->has_compute_copy() ? params_->compute(i).reshape({p.numel()}) : Tensor();
    adamw_step(ex, p.reshape({p.numel()}), g.reshape({g.numel()}), m, v, hp, copy);
  }
}

}  // namespace moelab
