#include "core/params.h"

#include "core/rng.h"

namespace moelab {

namespace {
constexpr int64_t kAlignBytes = 256;
}

size_t ParamBuffer::declare(const ParamSpec& spec) {
  MOELAB_CHECK(!allocated(), "parameter '", spec.name, "' declared after the buffer was allocated");
  MOELAB_CHECK(!spec.name.empty(), "a parameter needs a name");
  MOELAB_CHECK(index_.count(spec.name) == 0, "parameter '", spec.name, "' declared twice");
  MOELAB_CHECK(spec.shape.numel() > 0, "parameter '", spec.name, "' has shape ", spec.shape.str(), ": no elements");
  MOELAB_CHECK(spec.init != Init::Normal || spec.std > 0.0f, "parameter '", spec.name, "' has init std ", spec.std,
               ", expected > 0");
  // 64 elements: 256 bytes of f32 (training), 512 of f64 (checks); both on the boundary.
  constexpr int64_t kAlignElems = kAlignBytes / 4;
  const int64_t offset = (next_offset_ + kAlignElems - 1) / kAlignElems * kAlignElems;
  index_[spec.name] = entries_.size();
  entries_.push_back({spec, offset});
  next_offset_ = offset + spec.shape.numel();
  return entries_.size() - 1;
}

void ParamBuffer::allocate(Device device, DType dtype, bool with_grads) {
  MOELAB_CHECK(!allocated(), "ParamBuffer::allocate called twice");
  MOELAB_CHECK(dtype == DType::F32 || dtype == DType::F64, "ParamBuffer: dtype ", dtype_name(dtype),
               ", expected f32 (training) or f64 (gradient checks)");
  params_ = Tensor::zeros({next_offset_}, dtype, device);
  if (with_grads) grads_ = Tensor::zeros({next_offset_}, dtype, device);
}

void ParamBuffer::initialize(uint64_t seed) const {
  MOELAB_CHECK(allocated(), "ParamBuffer::initialize before allocate");
  for (const Entry& e : entries_) {
    const Tensor p = view(params_, e);
    switch (e.spec.init) {
      case Init::Normal: fill_normal(p, seed, static_cast<uint64_t>(e.offset), 0.0, e.spec.std); break;
      case Init::Zeros: p.zero(); break;
      case Init::Ones: {
        Tensor ones = Tensor::empty(p.shape(), p.dtype());
        ones.fill(1.0);
        p.copy_from(ones);
        break;
      }
    }
  }
  sync_compute_copy();
}

void ParamBuffer::add_compute_copy(DType dtype) {
  MOELAB_CHECK(allocated(), "ParamBuffer::add_compute_copy before allocate");
  MOELAB_CHECK(!compute_.defined(), "ParamBuffer::add_compute_copy called twice");
  MOELAB_CHECK(dtype == DType::BF16, "ParamBuffer: compute copy dtype ", dtype_name(dtype), ", expected bf16");
  compute_ = Tensor::zeros(params_.shape(), dtype, params_.device());
  sync_compute_copy();
}

void ParamBuffer::sync_compute_copy() const {
  // Through the host: this runs at start-up only (AdamW keeps the copy current during training),
  // and core/ sits below the ops. The zero padding stays zero.
  if (compute_.defined()) compute_.copy_from(params_.to(Device::CPU).to(compute_.dtype()));
}

void ParamBuffer::zero_grads() const {
  MOELAB_CHECK(grads_.defined(), "ParamBuffer::zero_grads: no gradient buffer (not allocated, or a buffer store)");
  grads_.zero();
}

Tensor ParamBuffer::param(const std::string& name) const { return view(params_, entry(name)); }
Tensor ParamBuffer::grad(const std::string& name) const { return view(grads_, entry(name)); }
Tensor ParamBuffer::param(size_t index) const {
  MOELAB_CHECK(index < entries_.size(), "parameter index ", index, " out of range (", entries_.size(), " declared)");
  return view(params_, entries_[index]);
}
Tensor ParamBuffer::compute(size_t index) const {
  if (!compute_.defined()) return param(index);
  MOELAB_CHECK(index < entries_.size(), "parameter index ", index, " out of range (", entries_.size(), " declared)");
  return view(compute_, entries_[index]);
}
Tensor ParamBuffer::grad(size_t index) const {
  MOELAB_CHECK(index < entries_.size(), "parameter index ", index, " out of range (", entries_.size(), " declared)");
  return view(grads_, entries_[index]);
}

int64_t ParamBuffer::numel() const {
  int64_t n = 0;
  for (const Entry& e : entries_) n += e.spec.shape.numel();
  return n;
}

const ParamBuffer::Entry& ParamBuffer::entry(const std::string& name) const {
  const auto it = index_.find(name);
  MOELAB_CHECK(it != index_.end(), "no parameter named '", name, "'");
  return entries_[it->second];
}

Tensor ParamBuffer::view(const Tensor& flat, const Entry& e) const {
  MOELAB_CHECK(flat.defined(), "parameter '", e.spec.name, "': buffer not allocated (before allocate, or the gradient of a non-gradient buffer)");
  return Tensor::view_of(flat.storage(), static_cast<size_t>(e.offset) * dtype_size(flat.dtype()), e.spec.shape,
                         flat.dtype());
}

}  // namespace moelab
