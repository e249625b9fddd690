// Tensor: a shape (at most 4 dims, row-major, contiguous), a dtype, a device, and a byte offset
// into shared Storage. A Tensor is a handle, like a pointer: copying it aliases the same memory,
// and `const Tensor&` does not make the elements read-only (ops take outputs as const Tensor&).
// Views along the first dimension (slice) and reshapes are free; there are no general strides.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"

namespace moelab {

enum class Device : uint8_t { CPU, CUDA };
inline const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

class Shape {
 public:
  static constexpr int kMaxDims = 4;
  Shape() = default;  // 0 dims: a scalar, numel 1
  Shape(std::initializer_list<int64_t> dims);
  explicit Shape(const std::vector<int64_t>& dims);

  int ndim() const { return n_; }
  int64_t operator[](int i) const;  // negative i counts from the end
  int64_t numel() const;
  std::vector<int64_t> dims() const { return {d_.begin(), d_.begin() + n_}; }
  std::string str() const;  // "[2,3,4]"
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }

 private:
  std::array<int64_t, kMaxDims> d_{};
  int n_ = 0;
};

// Owns one allocation on one device; frees it when the last Tensor viewing it goes away.
class Storage {
 public:
  // pinned: CPU memory that is page-locked (cuda/runtime.h), for staging copies to and from a GPU;
  // only with a GPU (without one, pinned memory is plain CPU memory).
  Storage(size_t bytes, Device device, bool pinned = false);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return ptr_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  bool pinned_ = false;
};

class Tensor {
 public:
  Tensor() = default;  // undefined: defined() is false
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::CPU);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::CPU);
  // A view of `shape` starting `byte_offset` bytes into `storage` (must fit).
  static Tensor view_of(std::shared_ptr<Storage> storage, size_t byte_offset, const Shape& shape, DType dtype);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim(); }
  int64_t size(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return storage_ ? storage_->device() : Device::CPU; }
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  size_t byte_offset() const { return offset_; }

  void* raw() const;
  // Typed pointer; throws when T does not match the dtype. Valid on any device (a device pointer
  // for CUDA tensors).
  template <typename T>
  T* data() const {
    MOELAB_CHECK(dtype_of<T>::value == dtype_, "tensor ", str(), ": data<", dtype_name(dtype_of<T>::value),
                 ">() on a ", dtype_name(dtype_), " tensor");
    return static_cast<T*>(raw());
  }

  // Rows [begin, end) of the first dimension, sharing storage.
  Tensor slice(int64_t begin, int64_t end) const;
  // The same elements with another shape of equal numel, sharing storage.
  Tensor reshape(const Shape& shape) const;
  // [numel / size(-1), size(-1)]: every leading dim folded into rows.
  Tensor as_2d() const;
  // [rows, numel / rows]: e.g. a [B, T, H, Dh] activation as the [N, H*Dh] matrix of a projection.
  Tensor as_rows(int64_t rows) const;

  // Copies of the data.
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;  // CPU only: elementwise conversion through float/double
  void copy_from(const Tensor& src) const;  // same shape and dtype, any devices
  void zero() const;
  void fill(double value) const;  // CPU only

  std::string str() const;  // "f32[2,3]@cpu"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;
  Shape shape_;
  DType dtype_ = DType::F32;
};

// Shared argument checks for ops: each throws moelab::Error naming the op, the tensor and the rule.
void check_defined(const char* op, const char* name, const Tensor& t);
void check_dtype(const char* op, const char* name, const Tensor& t, DType expected);
void check_shape(const char* op, const char* name, const Tensor& t, const Shape& expected);
void check_ndim(const char* op, const char* name, const Tensor& t, int min_dims, int max_dims);
void check_same_device(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors);

}  // namespace moelab
