#include "train/optimizer.h"

#include <algorithm>

namespace moelab {

AdamW::AdamW(const ParamBuffer& params, const AdamWConfig& cfg, std::vector<FlatRange> owned)
    : params_(&params), cfg_(cfg), owned_(std::move(owned)) {
  const Tensor& flat = params.flat_params();
  MOELAB_CHECK(flat.defined(), "AdamW: the parameter buffer is not allocated");
  if (owned_.empty()) owned_ = {FlatRange{0, params.numel_padded()}};
  int64_t total = 0, last_end = 0;
  for (const FlatRange& r : owned_) {
    MOELAB_CHECK(r.begin >= last_end && r.end >= r.begin && r.end <= params.numel_padded(), "AdamW: owned range [",
                 r.begin, ", ", r.end, ") is not sorted, disjoint and within the ", params.numel_padded(),
                 "-element buffer");
    total += r.size();
    last_end = r.end;
  }
  m_ = Tensor::zeros({total}, flat.dtype(), flat.device());
  v_ = Tensor::zeros({total}, flat.dtype(), flat.device());
}

void AdamW::restore(const Tensor& m, const Tensor& v, int64_t step) {
  MOELAB_CHECK(step >= 0, "AdamW::restore: step ", step, " must be >= 0");
  const Shape full{params_->numel_padded()};
  MOELAB_CHECK(m.shape() == full && v.shape() == full, "AdamW::restore: moments ", m.str(), " and ", v.str(),
               ", expected the full flat layout ", full.str());
  int64_t at = 0;
  for (const FlatRange& r : owned_) {  // copy_from checks dtypes
    m_.slice(at, at + r.size()).copy_from(m.slice(r.begin, r.end));
    v_.slice(at, at + r.size()).copy_from(v.slice(r.begin, r.end));
    at += r.size();
  }
  step_ = step;
}

void AdamW::step(const Exec& ex, double lr) {
  ++step_;
  AdamWParams hp;
  hp.lr = lr;
  hp.beta1 = cfg_.beta1;
  hp.beta2 = cfg_.beta2;
  hp.eps = cfg_.eps;
  hp.step = step_;
  const Tensor& flat_p = params_->flat_params();
  const Tensor& flat_g = params_->flat_grads();
  const Tensor& flat_c = params_->flat_compute();  // undefined without a compute copy
  // Each parameter's part of each owned range (the weight-decay flag is per parameter); m and v
  // hold the owned ranges back to back.
  int64_t at = 0;
  for (const FlatRange& r : owned_) {
    for (const ParamBuffer::Entry& e : params_->entries()) {
      const int64_t b = std::max(r.begin, e.offset), end = std::min(r.end, e.offset + e.spec.shape.numel());
      if (b >= end) continue;
      hp.weight_decay = e.spec.weight_decay ? cfg_.weight_decay : 0.0;
      const int64_t mb = at + (b - r.begin), me = mb + (end - b);
      // In mixed precision the same pass refreshes the parameter's bf16 compute copy.
      adamw_step(ex, flat_p.slice(b, end), flat_g.slice(b, end), m_.slice(mb, me), v_.slice(mb, me), hp,
                 flat_c.defined() ? flat_c.slice(b, end) : Tensor());
    }
    at += r.size();
  }
}

}  // namespace moelab
