#include "core/ops/columns.h"

#include <cstring>

#include "core/ops/op_util.h"
#include "cuda/columns.h"

namespace moelab {

namespace {
// Checks the three operands and returns {rows, bytes per row of a, bytes per row of b}.
struct ColumnLayout { int64_t rows; size_t a_bytes, b_bytes; };

ColumnLayout check_columns(const char* op, const Tensor& a, const Tensor& b, const Tensor& whole) {
  check_ndim(op, "a", a, 1, 4);
  check_ndim(op, "b", b, 1, 4);
  check_ndim(op, "whole", whole, 1, 4);
  check_dtype(op, "b", b, a.dtype());
  check_dtype(op, "whole", whole, a.dtype());
  check_same_device(op, {{"a", &a}, {"b", &b}, {"whole", &whole}});
  const int64_t rows = ops_detail::rows_of(whole);
  MOELAB_CHECK(a.size(-1) + b.size(-1) == whole.size(-1) && ops_detail::rows_of(a) == rows &&
                   ops_detail::rows_of(b) == rows,
               op, ": a ", a.str(), " and b ", b.str(), " do not split ", whole.str(), " into column blocks");
  const size_t es = dtype_size(a.dtype());
  return {rows, static_cast<size_t>(a.size(-1)) * es, static_cast<size_t>(b.size(-1)) * es};
}
}  // namespace

void concat_columns(const Exec& ex, const Tensor& a, const Tensor& b, const Tensor& out) {
  const char* op = "concat_columns";
  const ColumnLayout l = check_columns(op, a, b, out);
  if (out.device() == Device::CUDA) {
    const int64_t ab = static_cast<int64_t>(l.a_bytes), bb = static_cast<int64_t>(l.b_bytes);
    // Two blocks into every row of out (ab + bb bytes): a's ab bytes, then b's bb bytes.
    cuda::CopyColumnsParams p;
    p.dst_pitch = ab + bb;
    p.rows = l.rows;
    p.stream = ex.stream;
    p.dst = out.raw();
    p.src = a.raw(); p.src_pitch = ab; p.width_bytes = ab;
    cuda::copy_columns(p);
    p.dst = static_cast<char*>(out.raw()) + ab;
    p.src = b.raw(); p.src_pitch = bb; p.width_bytes = bb;
    cuda::copy_columns(p);
    return;
  }
  const char* pa = static_cast<const char*>(a.raw());
  const char* pb = static_cast<const char*>(b.raw());
  char* po = static_cast<char*>(out.raw());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < l.rows; ++r) {
    std::memcpy(po + r * (l.a_bytes + l.b_bytes), pa + r * l.a_bytes, l.a_bytes);
    std::memcpy(po + r * (l.a_bytes + l.b_bytes) + l.a_bytes, pb + r * l.b_bytes, l.b_bytes);
  }
}

void split_columns(const Exec& ex, const Tensor& x, const Tensor& a, const Tensor& b) {
  const char* op = "split_columns";
  const ColumnLayout l = check_columns(op, a, b, x);
  if (x.device() == Device::CUDA) {
    const int64_t ab = static_cast<int64_t>(l.a_bytes), bb = static_cast<int64_t>(l.b_bytes);
    // Two blocks from every row of x (ab + bb bytes): a's ab bytes, then b's bb bytes.
    cuda::CopyColumnsParams p;
    p.src_pitch = ab + bb;
    p.rows = l.rows;
    p.stream = ex.stream;
    p.src = x.raw();
    p.dst = a.raw(); p.dst_pitch = ab; p.width_bytes = ab;
    cuda::copy_columns(p);
    p.src = static_cast<const char*>(x.raw()) + ab;
    p.dst = b.raw(); p.dst_pitch = bb; p.width_bytes = bb;
    cuda::copy_columns(p);
    return;
  }
  const char* px = static_cast<const char*>(x.raw());
  char* pa = static_cast<char*>(a.raw());
  char* pb = static_cast<char*>(b.raw());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < l.rows; ++r) {
    std::memcpy(pa + r * l.a_bytes, px + r * (l.a_bytes + l.b_bytes), l.a_bytes);
    std::memcpy(pb + r * l.b_bytes, px + r * (l.a_bytes + l.b_bytes) + l.a_bytes, l.b_bytes);
  }
}

void slice_columns(const Exec& ex, const Tensor& x, int64_t begin, const Tensor& out) {
  const char* op = "slice_columns";
  check_ndim(op, "x", x, 1, 4);
  check_ndim(op, "out", out, 1, 4);
  check_dtype(op, "out", out, x.dtype());
  check_same_device(op, {{"x", &x}, {"out", &out}});
  const int64_t rows = ops_detail::rows_of(x), width = out.size(-1);
  MOELAB_CHECK(ops_detail::rows_of(out) == rows && begin >= 0 && begin + width <= x.size(-1), op, ": columns [", begin,
               ", ", begin + width, ") of ", x.str(), " do not fit ", out.str());
  const size_t es = dtype_size(x.dtype()), row_bytes = static_cast<size_t>(x.size(-1)) * es, out_bytes = width * es;
  const char* px = static_cast<const char*>(x.raw()) + begin * es;
  if (x.device() == Device::CUDA) {
    cuda::CopyColumnsParams p;
    p.dst = out.raw();
    p.dst_pitch = static_cast<int64_t>(out_bytes);
    p.src = px;
    p.src_pitch = static_cast<int64_t>(row_bytes);
    p.rows = rows;
    p.width_bytes = static_cast<int64_t>(out_bytes);
    p.stream = ex.stream;
    cuda::copy_columns(p);
    return;
  }
  char* po = static_cast<char*>(out.raw());
  for (int64_t r = 0; r < rows; ++r) std::memcpy(po + r * out_bytes, px + r * row_bytes, out_bytes);
}

}  // namespace moelab
