#include "core/tensor.h"

#include <cstring>
#include <sstream>

#include "core/allocator.h"
#include "core/device.h"
#include "cuda/runtime.h"

namespace moelab {

// ---- Shape ------------------------------------------------------------------------------------

Shape::Shape(std::initializer_list<int64_t> dims) : Shape(std::vector<int64_t>(dims)) {}

Shape::Shape(const std::vector<int64_t>& dims) {
  MOELAB_CHECK(dims.size() <= kMaxDims, "shape with ", dims.size(), " dims: at most ", kMaxDims, " are supported");
  n_ = static_cast<int>(dims.size());
  for (int i = 0; i < n_; ++i) {
    MOELAB_CHECK(dims[i] >= 0, "shape dim ", i, " is ", dims[i], ": dims must be >= 0");
    d_[i] = dims[i];
  }
}

int64_t Shape::operator[](int i) const {
  const int j = i < 0 ? i + n_ : i;
  MOELAB_CHECK(j >= 0 && j < n_, "dim ", i, " out of range for shape ", str());
  return d_[j];
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < n_; ++i) n *= d_[i];
  return n;
}

std::string Shape::str() const {
  std::ostringstream os;
  os << '[';
  for (int i = 0; i < n_; ++i) os << (i ? "," : "") << d_[i];
  os << ']';
  return os.str();
}

bool Shape::operator==(const Shape& o) const {
  if (n_ != o.n_) return false;
  for (int i = 0; i < n_; ++i)
    if (d_[i] != o.d_[i]) return false;
  return true;
}

// ---- Storage ----------------------------------------------------------------------------------

Storage::Storage(size_t bytes, Device device, bool pinned)
    : bytes_(bytes), device_(device), pinned_(pinned && device == Device::CPU && cuda_available()) {
  if (pinned_) ptr_ = cuda::malloc_pinned(bytes == 0 ? 256 : bytes);
  else ptr_ = device == Device::CPU ? CpuAllocator::allocate(bytes) : CudaAllocator::allocate(bytes);
}

Storage::~Storage() {
  if (pinned_) cuda::free_pinned(ptr_);
  else if (device_ == Device::CPU) CpuAllocator::release(ptr_);
  else CudaAllocator::release(ptr_);
}

// ---- Tensor -----------------------------------------------------------------------------------

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  return view_of(std::make_shared<Storage>(bytes, device), 0, shape, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.zero();
  return t;
}

Tensor Tensor::view_of(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape, DType dtype) {
  MOELAB_CHECK(storage != nullptr, "Tensor::view_of: null storage");
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  MOELAB_CHECK(byte_offset + bytes <= storage->bytes(), "view ", dtype_name(dtype), shape.str(), " at byte ",
               byte_offset, " needs ", byte_offset + bytes, " bytes but the storage has ", storage->bytes());
  Tensor t;
  t.storage_ = std::move(storage);
  t.offset_ = byte_offset;
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

void* Tensor::raw() const {
  MOELAB_CHECK(defined(), "access to an undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_;
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  MOELAB_CHECK(ndim() >= 1, "slice of a 0-d tensor ", str());
  MOELAB_CHECK(0 <= begin && begin <= end && end <= size(0), "slice [", begin, ", ", end, ") out of range for ", str());
  std::vector<int64_t> dims = shape_.dims();
  const int64_t row = dims[0] ? numel() / dims[0] : 0;
  dims[0] = end - begin;
  return view_of(storage_, offset_ + static_cast<size_t>(begin * row) * dtype_size(dtype_), Shape(dims), dtype_);
}

Tensor Tensor::reshape(const Shape& shape) const {
  MOELAB_CHECK(shape.numel() == numel(), "reshape of ", str(), " to ", shape.str(), ": element counts differ (",
               numel(), " vs ", shape.numel(), ")");
  return view_of(storage_, offset_, shape, dtype_);
}

Tensor Tensor::as_2d() const {
  MOELAB_CHECK(ndim() >= 1, "as_2d of a 0-d tensor ", str());
  const int64_t cols = size(-1);
  return reshape({cols ? numel() / cols : 0, cols});
}

Tensor Tensor::as_rows(int64_t rows) const {
  MOELAB_CHECK(rows > 0 && numel() % rows == 0, "as_rows(", rows, ") of ", str(), ": rows must divide the element count");
  return reshape({rows, numel() / rows});
}

Tensor Tensor::to(Device device) const {
  Tensor out = empty(shape_, dtype_, device);
  out.copy_from(*this);
  return out;
}

namespace {
template <typename T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, double>) return x;
  else if constexpr (std::is_same_v<T, int32_t>) return static_cast<int32_t>(x);
  else return from_float<T>(static_cast<float>(x));
}

template <typename Fn>
void visit_dtype(DType t, Fn&& fn) {
  switch (t) {
    case DType::F32: fn(float{}); break;
    case DType::F64: fn(double{}); break;
    case DType::BF16: fn(bf16_t{}); break;
    case DType::FP8_E4M3: fn(fp8_e4m3_t{}); break;
    case DType::I32: fn(int32_t{}); break;
  }
}
}  // namespace

Tensor Tensor::to(DType dtype) const {
  MOELAB_CHECK(device() == Device::CPU, "Tensor::to(", dtype_name(dtype), ") of ", str(), ": dtype casts run on the CPU");
  Tensor out = empty(shape_, dtype, Device::CPU);
  const int64_t n = numel();
  visit_dtype(dtype_, [&](auto src_tag) {
    using S = decltype(src_tag);
    const S* src = data<S>();
    visit_dtype(dtype, [&](auto dst_tag) {
      using D = decltype(dst_tag);
      D* dst = out.data<D>();
      for (int64_t i = 0; i < n; ++i) dst[i] = from_double<D>(to_double(src[i]));
    });
  });
  return out;
}

void Tensor::copy_from(const Tensor& src) const {
  MOELAB_CHECK(src.shape() == shape_ && src.dtype() == dtype_, "copy_from: destination ", str(), " and source ",
               src.str(), " differ in shape or dtype");
  const size_t bytes = nbytes();
  if (bytes == 0) return;
  if (device() == Device::CPU && src.device() == Device::CPU) {
    std::memcpy(raw(), src.raw(), bytes);
    return;
  }
  if (device() == Device::CUDA && src.device() == Device::CPU) cuda::memcpy_h2d(raw(), src.raw(), bytes);
  else if (device() == Device::CPU) cuda::memcpy_d2h(raw(), src.raw(), bytes);
  else cuda::memcpy_d2d(raw(), src.raw(), bytes);
}

void Tensor::zero() const {
  if (nbytes() == 0) return;
  if (device() == Device::CPU) {
    std::memset(raw(), 0, nbytes());
    return;
  }
  cuda::memset_device(raw(), 0, nbytes());
}

void Tensor::fill(double value) const {
  MOELAB_CHECK(device() == Device::CPU, "Tensor::fill on ", str(), ": CPU tensors only");
  const int64_t n = numel();
  visit_dtype(dtype_, [&](auto tag) {
    using T = decltype(tag);
    T* p = data<T>();
    const T v = from_double<T>(value);
    for (int64_t i = 0; i < n; ++i) p[i] = v;
  });
}

std::string Tensor::str() const {
  if (!defined()) return "undefined";
  return std::string(dtype_name(dtype_)) + shape_.str() + "@" + device_name(device());
}

// ---- argument checks for ops --------------------------------------------------------------------

void check_defined(const char* op, const char* name, const Tensor& t) {
  MOELAB_CHECK(t.defined(), op, ": ", name, " is undefined");
}

void check_dtype(const char* op, const char* name, const Tensor& t, DType expected) {
  check_defined(op, name, t);
  MOELAB_CHECK(t.dtype() == expected, op, ": ", name, " is ", t.str(), ", expected dtype ", dtype_name(expected));
}

void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected) {
  check_defined(op, name, t);
  MOELAB_CHECK(t.shape() == expected, op, ": ", name, " is ", t.str(), ", expected shape ", expected.str());
}

void check_ndim(const char* op, const char* name, const Tensor& t, int min_dims, int max_dims) {
  check_defined(op, name, t);
  MOELAB_CHECK(t.ndim() >= min_dims && t.ndim() <= max_dims, op, ": ", name, " is ", t.str(), ", expected ",
               min_dims, "..", max_dims, " dims");
}

void check_same_device(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
  const std::pair<const char*, const Tensor*>* first = nullptr;
  for (const auto& nt : tensors) {
    if (!nt.second->defined()) continue;
    if (!first) { first = &nt; continue; }
    MOELAB_CHECK(nt.second->device() == first->second->device(), op, ": ", nt.first, " is on ",
                 device_name(nt.second->device()), " but ", first->first, " is on ", device_name(first->second->device()));
  }
}

}  // namespace moelab
