// Embedding: argument checks (including every id) + dispatch, and the CPU reference.
#include "core/ops/embedding.h"

#include <algorithm>
#include <vector>

#include "core/ops/op_util.h"
#include "cuda/embedding.h"

namespace moelab {

namespace ref {

template <typename T>
void embedding_forward(const int32_t* ids, const T* weight, T* out, int64_t tokens, int64_t dim) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < tokens; ++t) std::copy_n(weight + static_cast<int64_t>(ids[t]) * dim, dim, out + t * dim);
}

// Two tokens with the same id write the same row, so threads cannot split the tokens. Instead each
// thread owns a block of columns and walks ALL tokens in order: no two threads touch the same
// element, and every element receives its additions in token order, the same for any thread count.
template <typename T>
void embedding_backward(const T* grad_out, const int32_t* ids, T* grad_weight, int64_t tokens, int64_t dim) {
  constexpr int64_t kCols = 64;
  const int64_t col_blocks = (dim + kCols - 1) / kCols;
#pragma omp parallel for schedule(static)
  for (int64_t cb = 0; cb < col_blocks; ++cb) {
    const int64_t d0 = cb * kCols, d1 = std::min(dim, d0 + kCols);
    for (int64_t t = 0; t < tokens; ++t) {
      T* row = grad_weight + static_cast<int64_t>(ids[t]) * dim;
      const T* g = grad_out + t * dim;
      for (int64_t d = d0; d < d1; ++d) row[d] += g[d];
    }
  }
}

template void embedding_forward<float>(const int32_t*, const float*, float*, int64_t, int64_t);
template void embedding_forward<double>(const int32_t*, const double*, double*, int64_t, int64_t);
template void embedding_backward<float>(const float*, const int32_t*, float*, int64_t, int64_t);
template void embedding_backward<double>(const double*, const int32_t*, double*, int64_t, int64_t);

}  // namespace ref

namespace {
// ids i32 [...] and the table (weight or grad_weight, `name`) [V, D]; returns the shape of out and
// grad_out: ids' dims + [D].
Shape check_embedding_shapes(const char* op, const Tensor& ids, const char* name, const Tensor& weight) {
  check_ndim(op, "ids", ids, 1, 3);  // out gets one more dim, and tensors have at most 4
  check_dtype(op, "ids", ids, DType::I32);
  check_ndim(op, name, weight, 2, 2);
  MOELAB_CHECK(weight.size(1) > 0, op, ": ", name, " is ", weight.str(), ", expected [V, D] with D > 0");
  std::vector<int64_t> dims = ids.shape().dims();
  dims.push_back(weight.size(1));
  return Shape(dims);
}

[[noreturn]] void fail_bad_id(const char* op, const Tensor& ids, int32_t id, int64_t n, int64_t vocab) {
  MOELAB_FAIL(op, ": ids ", ids.str(), " holds ", id, " at flat position ", n, ", expected a token id in [0, V=", vocab,
              ")");
}

// A bad id would read or write outside weight, so every id is checked on one thread before any
// work starts (an exception must not leave an OpenMP region); the error names the first bad one.
void check_ids(const char* op, const Tensor& ids, int64_t vocab) {
  const int32_t* p = ids.data<int32_t>();
  for (int64_t n = 0; n < ids.numel(); ++n)
    if (p[n] < 0 || p[n] >= vocab) fail_bad_id(op, ids, p[n], n, vocab);
}

// A CUDA launcher left the first bad position in `flag` (-1: none): bring it back and report.
void check_ids_flag(const char* op, const Tensor& ids, const Tensor& flag, int64_t vocab) {
  const int32_t pos = flag.to(Device::CPU).data<int32_t>()[0];
  if (pos < 0) return;
  const int32_t id = ids.reshape({ids.numel()}).slice(pos, pos + 1).to(Device::CPU).data<int32_t>()[0];
  fail_bad_id(op, ids, id, pos, vocab);
}

void check_tokens(const char* op, const Tensor& ids) {
  MOELAB_CHECK(ids.numel() < (int64_t{1} << 31), op, ": ids ", ids.str(), " holds more than 2^31 - 1 tokens");
}
}  // namespace

void embedding_forward(const Exec& ex, const Tensor& ids, const Tensor& weight, const Tensor& out) {
  const char* op = "embedding_forward";
  check_shape(op, "out", out, check_embedding_shapes(op, ids, "weight", weight));
  check_same_device(op, {{"ids", &ids}, {"weight", &weight}, {"out", &out}});
  if (weight.device() == Device::CUDA) {
    MOELAB_CHECK(weight.dtype() == DType::F32 || weight.dtype() == DType::BF16, op, ": weight is ", weight.str(),
                 ", expected f32 or bf16 on CUDA");
    check_dtype(op, "out", out, weight.dtype());
    check_tokens(op, ids);
    if (ids.numel() == 0) return;
    ScratchScope scratch(ex, op);
    const Tensor flag = scratch.take({1}, DType::I32);
    cuda::EmbeddingForwardParams p;
    p.ids = ids.data<int32_t>();
    p.weight = weight.raw();
    p.out = out.raw();
    p.bad_pos = reinterpret_cast<uint32_t*>(flag.raw());
    p.tokens = ids.numel();
    p.vocab = weight.size(0);
    p.dim = weight.size(1);
    p.bf16 = weight.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::embedding_forward(p);
    check_ids_flag(op, ids, flag, weight.size(0));
    return;
  }
  check_ids(op, ids, weight.size(0));
  ops_detail::dispatch_cpu_float(op, weight, [&](auto tag) {
    using T = decltype(tag);
    check_dtype(op, "out", out, weight.dtype());
    ref::embedding_forward<T>(ids.data<int32_t>(), weight.data<T>(), out.data<T>(), ids.numel(), weight.size(1));
  });
}

void embedding_backward(const Exec& ex, const Tensor& grad_out, const Tensor& ids, const Tensor& grad_weight) {
  const char* op = "embedding_backward";
  check_shape(op, "grad_out", grad_out, check_embedding_shapes(op, ids, "grad_weight", grad_weight));
  check_same_device(op, {{"grad_out", &grad_out}, {"ids", &ids}, {"grad_weight", &grad_weight}});
  if (grad_weight.device() == Device::CUDA) {
    check_dtype(op, "grad_weight", grad_weight, DType::F32);
    MOELAB_CHECK(grad_out.dtype() == DType::F32 || grad_out.dtype() == DType::BF16, op, ": grad_out is ", grad_out.str(),
                 ", expected f32 or bf16 on CUDA");
    check_tokens(op, ids);
    if (ids.numel() == 0) return;
    // The sort's buffers and the flag come from the step's scratch: allocating them here would
    // synchronise the device at every call.
    ScratchScope scratch(ex, op);
    const size_t ws_bytes = cuda::embedding_backward_workspace_bytes(ids.numel());
    const Tensor ws = scratch.take({static_cast<int64_t>((ws_bytes + 3) / 4)}, DType::I32);
    const Tensor flag = scratch.take({1}, DType::I32);
    cuda::EmbeddingBackwardParams p;
    p.grad_out = grad_out.raw();
    p.ids = ids.data<int32_t>();
    p.grad_weight = grad_weight.data<float>();
    p.bad_pos = reinterpret_cast<uint32_t*>(flag.raw());
    p.workspace = ws.raw();
    p.workspace_bytes = ws.nbytes();
    p.tokens = ids.numel();
    p.vocab = grad_weight.size(0);
    p.dim = grad_weight.size(1);
    p.bf16 = grad_out.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::embedding_backward(p);
    check_ids_flag(op, ids, flag, grad_weight.size(0));
    return;
  }
  check_ids(op, ids, grad_weight.size(0));
  ops_detail::dispatch_cpu_float(op, grad_weight, [&](auto tag) {
    using T = decltype(tag);
    check_dtype(op, "grad_out", grad_out, grad_weight.dtype());
    ref::embedding_backward<T>(grad_out.data<T>(), ids.data<int32_t>(), grad_weight.data<T>(), ids.numel(),
                               grad_weight.size(1));
  });
}

}  // namespace moelab
