// Softmax cross-entropy: argument checks (including every target) + dispatch, and the CPU reference.
// On CUDA the targets are checked on the device by the forward's scan, which records the first bad
// row in the statistics (reported with the CPU's message by whoever reads them) and counts the
// valid rows.
#include "core/ops/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <utility>
#include <vector>

#include "core/ops/op_util.h"
#include "core/ops/vec_math.h"
#include "cuda/cross_entropy.h"

namespace moelab {

namespace ref {

template <typename T>
void cross_entropy_forward(const T* logits, const int32_t* targets, int ignore_index, T* losses, T* lse, int64_t rows,
                           int64_t vocab, double* stats) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = logits + r * vocab;
    const T max = *std::max_element(x, x + vocab);
    const T sum = lane_sum<T>(vocab, [&](int64_t v) { return exp_approx(x[v] - max); });
    const T log_sum = std::log(sum);
    lse[r] = max + log_sum;
    // (max - x_t) + log_sum rather than lse - x_t: with large logits lse is a large number whose
    // rounding (float: ~6e-5 at 1000) would swamp a small loss.
    losses[r] = targets[r] == ignore_index ? T(0) : (max - x[targets[r]]) + log_sum;
  }
  // The sum on one thread, in row order and in double: the same value for any thread count.
  double total = 0;
  int64_t n_valid = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] == ignore_index) continue;
    total += losses[r];
    ++n_valid;
  }
  stats[kCrossEntropyLossSum] = total;
  stats[kCrossEntropyValid] = static_cast<double>(n_valid);
  stats[kCrossEntropyBadRow] = -1;  // the caller checked every target
  stats[kCrossEntropyBadTarget] = 0;
}

template <typename T>
void cross_entropy_backward(const T* logits, const int32_t* targets, const T* lse, int ignore_index, double grad_loss,
                            int64_t n_valid, T* grad_logits, int64_t rows, int64_t vocab) {
  const T scale = n_valid ? static_cast<T>(grad_loss / static_cast<double>(n_valid)) : T(0);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const T* x = logits + r * vocab;
    T* g = grad_logits + r * vocab;
    if (targets[r] == ignore_index) {
      std::fill_n(g, vocab, T(0));
      continue;
    }
    const T row_lse = lse[r];
    for (int64_t v = 0; v < vocab; ++v) g[v] = scale * exp_approx(x[v] - row_lse);
    g[targets[r]] -= scale;
  }
}

template void cross_entropy_forward<float>(const float*, const int32_t*, int, float*, float*, int64_t, int64_t,
                                           double*);
template void cross_entropy_forward<double>(const double*, const int32_t*, int, double*, double*, int64_t, int64_t,
                                            double*);
template void cross_entropy_backward<float>(const float*, const int32_t*, const float*, int, double, int64_t, float*,
                                            int64_t, int64_t);
template void cross_entropy_backward<double>(const double*, const int32_t*, const double*, int, double, int64_t,
                                             double*, int64_t, int64_t);

}  // namespace ref

namespace {
// logits [..., V] (at least 2-D), targets i32 and lse with logits' dims without V; returns V.
int64_t check_cross_entropy_shapes(const char* op, const Tensor& logits, const Tensor& targets, const Tensor& lse) {
  check_ndim(op, "logits", logits, 2, 4);
  const int64_t vocab = logits.size(-1);
  MOELAB_CHECK(vocab > 0, op, ": logits is ", logits.str(), ", its last dim (V) must be > 0");
  std::vector<int64_t> dims = logits.shape().dims();
  dims.pop_back();
  const Shape rows_shape(dims);
  check_shape(op, "targets", targets, rows_shape);
  check_dtype(op, "targets", targets, DType::I32);
  check_shape(op, "lse", lse, rows_shape);
  return vocab;
}

// A target outside [0, V) would index outside its row, so every target is checked on one thread
// before any work starts (an exception must not leave an OpenMP region); the first bad one is named.
void check_targets(const char* op, const Tensor& targets, int ignore_index, int64_t vocab) {
  const int32_t* t = targets.data<int32_t>();
  for (int64_t r = 0; r < targets.numel(); ++r)
    MOELAB_CHECK(t[r] == ignore_index || (t[r] >= 0 && t[r] < vocab), op, ": targets ", targets.str(), " holds ", t[r],
                 " at row ", r, ", expected a class in [0, V=", vocab, ") or ignore_index ", ignore_index);
}

void check_cuda_dtypes(const char* op, const Tensor& logits, std::initializer_list<std::pair<const char*, const Tensor*>> stats) {
  MOELAB_CHECK(logits.dtype() == DType::F32 || logits.dtype() == DType::BF16, op, ": logits is ", logits.str(),
               ", expected f32 or bf16 on CUDA");
  for (const auto& [name, t] : stats) check_dtype(op, name, *t, DType::F32);
}

void check_stats(const char* op, const Tensor& logits, const Tensor& stats) {
  check_shape(op, "stats", stats, {kCrossEntropyStats});
  check_dtype(op, "stats", stats, DType::F64);
  check_same_device(op, {{"logits", &logits}, {"stats", &stats}});
}
}  // namespace

void cross_entropy_forward(const Exec& ex, const Tensor& logits, const Tensor& targets, int ignore_index,
                           const Tensor& losses, const Tensor& lse, const Tensor& stats) {
  const char* op = "cross_entropy_forward";
  const int64_t vocab = check_cross_entropy_shapes(op, logits, targets, lse);
  check_shape(op, "losses", losses, targets.shape());
  check_same_device(op, {{"logits", &logits}, {"targets", &targets}, {"losses", &losses}, {"lse", &lse}});
  check_stats(op, logits, stats);
  if (logits.device() == Device::CUDA) {
    check_cuda_dtypes(op, logits, {{"losses", &losses}, {"lse", &lse}});
    cuda::CrossEntropyForwardParams p;
    p.logits = logits.raw();
    p.targets = targets.data<int32_t>();
    p.losses = losses.data<float>();
    p.lse = lse.data<float>();
    p.stats = stats.data<double>();
    p.rows = targets.numel();
    p.vocab = vocab;
    p.ignore_index = ignore_index;
    p.bf16 = logits.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::cross_entropy_forward(p);
    return;
  }
  check_targets(op, targets, ignore_index, vocab);
  ops_detail::dispatch_cpu_float(op, logits, [&](auto tag) {
    using T = decltype(tag);
    check_dtype(op, "losses", losses, logits.dtype());
    check_dtype(op, "lse", lse, logits.dtype());
    ref::cross_entropy_forward<T>(logits.data<T>(), targets.data<int32_t>(), ignore_index, losses.data<T>(),
                                  lse.data<T>(), targets.numel(), vocab, stats.data<double>());
  });
}

void cross_entropy_backward(const Exec& ex, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                            const Tensor& stats, int ignore_index, double grad_loss, const Tensor& grad_logits) {
  const char* op = "cross_entropy_backward";
  const int64_t vocab = check_cross_entropy_shapes(op, logits, targets, lse);
  check_shape(op, "grad_logits", grad_logits, logits.shape());
  check_same_device(op, {{"logits", &logits}, {"targets", &targets}, {"lse", &lse}, {"grad_logits", &grad_logits}});
  check_stats(op, logits, stats);
  if (logits.device() == Device::CUDA) {
    check_cuda_dtypes(op, logits, {{"lse", &lse}});
    check_dtype(op, "grad_logits", grad_logits, logits.dtype());
    cuda::CrossEntropyBackwardParams p;
    p.logits = logits.raw();
    p.targets = targets.data<int32_t>();
    p.lse = lse.data<float>();
    p.stats = stats.data<double>();
    p.grad_logits = grad_logits.raw();
    p.rows = targets.numel();
    p.vocab = vocab;
    p.ignore_index = ignore_index;
    p.grad_loss = grad_loss;
    p.bf16 = logits.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::cross_entropy_backward(p);
    return;
  }
  check_targets(op, targets, ignore_index, vocab);
  const int64_t n_valid = static_cast<int64_t>(stats.data<double>()[kCrossEntropyValid]);
  ops_detail::dispatch_cpu_float(op, logits, [&](auto tag) {
    using T = decltype(tag);
    check_dtype(op, "lse", lse, logits.dtype());
    check_dtype(op, "grad_logits", grad_logits, logits.dtype());
    ref::cross_entropy_backward<T>(logits.data<T>(), targets.data<int32_t>(), lse.data<T>(), ignore_index, grad_loss,
                                   n_valid, grad_logits.data<T>(), targets.numel(), vocab);
  });
}

CrossEntropyStats read_cross_entropy_stats(const Tensor& stats) {
  check_shape("read_cross_entropy_stats", "stats", stats, {kCrossEntropyStats});
  check_dtype("read_cross_entropy_stats", "stats", stats, DType::F64);
  const Tensor host = stats.to(Device::CPU);
  const double* s = host.data<double>();
  CrossEntropyStats st;
  st.loss_sum = s[kCrossEntropyLossSum];
  st.n_valid = static_cast<int64_t>(s[kCrossEntropyValid]);
  st.bad_row = static_cast<int64_t>(s[kCrossEntropyBadRow]);
  st.bad_target = static_cast<int64_t>(s[kCrossEntropyBadTarget]);
  return st;
}

double cross_entropy_mean(const Exec& ex, const Tensor& logits, const Tensor& targets, int ignore_index,
                          const Tensor& losses, const Tensor& lse, const Tensor& stats) {
  cross_entropy_forward(ex, logits, targets, ignore_index, losses, lse, stats);
  const CrossEntropyStats st = read_cross_entropy_stats(stats);
  MOELAB_CHECK(st.bad_row < 0, "cross_entropy_forward: targets ", targets.str(), " holds ", st.bad_target, " at row ",
               st.bad_row, ", expected a class in [0, V=", logits.size(-1), ") or ignore_index ", ignore_index);
  return st.mean();
}

}  // namespace moelab
