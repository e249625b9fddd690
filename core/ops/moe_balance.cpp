// MoE balance losses: argument checks + dispatch, and the CPU reference (the specification).
#include "core/ops/moe_balance.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/ops/op_util.h"
#include "cuda/moe_balance.h"

namespace moelab {

namespace ref {

namespace {
// f [B, E]: f_{b,i} = E / (K*T) * (selections of expert i in sequence b).
std::vector<double> selection_fractions(const int32_t* topk_idx, int64_t rows, int64_t E, int64_t K, int64_t seq_len) {
  std::vector<double> f((rows / seq_len) * E, 0.0);
  for (int64_t i = 0; i < rows * K; ++i) f[(i / K) / seq_len * E + topk_idx[i]] += 1.0;
  const double scale = static_cast<double>(E) / static_cast<double>(K * seq_len);
  for (double& v : f) v *= scale;
  return f;
}

// lse of one row of logits, with the row max subtracted so that no e^... overflows.
template <typename T>
T logsumexp(const T* l, int64_t E) {
  const T max = *std::max_element(l, l + E);
  T sum = 0;
  for (int64_t j = 0; j < E; ++j) sum += std::exp(l[j] - max);
  return max + std::log(sum);
}
}  // namespace

template <typename T>
double moe_aux_loss_forward(const T* scores, const int32_t* topk_idx, int64_t rows, int64_t E, int64_t K,
                            int64_t seq_len, double alpha, const double* given) {
  const std::vector<double> f =
      given ? std::vector<double>(given, given + (rows / seq_len) * E) : selection_fractions(topk_idx, rows, E, K, seq_len);
  // sum_b sum_i f_{b,i} P_{b,i} = (1/T) sum_t sum_i f_{b(t),i} s_{t,i} / Z_t: one pass over the rows.
  double total = 0;
  for (int64_t t = 0; t < rows; ++t) {
    const T* s = scores + t * E;
    const double* fb = f.data() + (t / seq_len) * E;
    T z = 0, fs = 0;
    for (int64_t j = 0; j < E; ++j) {
      z += s[j];
      fs += static_cast<T>(fb[j]) * s[j];
    }
    total += static_cast<double>(fs / z);
  }
  const double num_seqs = static_cast<double>(rows / seq_len);
  return alpha * total / (num_seqs * static_cast<double>(seq_len));
}

template <typename T>
void moe_aux_loss_backward(const T* scores, const int32_t* topk_idx, int64_t rows, int64_t E, int64_t K,
                           int64_t seq_len, double alpha, double grad_loss, T* grad_scores, const double* given) {
  const std::vector<double> f =
      given ? std::vector<double>(given, given + (rows / seq_len) * E) : selection_fractions(topk_idx, rows, E, K, seq_len);
  const T c = static_cast<T>(grad_loss * alpha / static_cast<double>(rows));  // rows = B*T
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    const T* s = scores + t * E;
    const double* fb = f.data() + (t / seq_len) * E;
    T z = 0, fs = 0;
    for (int64_t j = 0; j < E; ++j) {
      z += s[j];
      fs += static_cast<T>(fb[j]) * s[j];
    }
    for (int64_t j = 0; j < E; ++j) grad_scores[t * E + j] += c * (static_cast<T>(fb[j]) - fs / z) / z;
  }
}

template <typename T>
double moe_z_loss_forward(const T* logits, int64_t rows, int64_t E, double coef) {
  double total = 0;
  for (int64_t t = 0; t < rows; ++t) {
    const T lse = logsumexp(logits + t * E, E);
    total += static_cast<double>(lse * lse);
  }
  return coef * total / static_cast<double>(rows);
}

template <typename T>
void moe_z_loss_backward(const T* logits, int64_t rows, int64_t E, double coef, double grad_loss, T* grad_logits) {
  const T c = static_cast<T>(grad_loss * coef * 2.0 / static_cast<double>(rows));
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < rows; ++t) {
    const T* l = logits + t * E;
    const T lse = logsumexp(l, E);
    for (int64_t j = 0; j < E; ++j) grad_logits[t * E + j] += c * lse * std::exp(l[j] - lse);
  }
}

template double moe_aux_loss_forward<float>(const float*, const int32_t*, int64_t, int64_t, int64_t, int64_t, double,
                                            const double*);
template double moe_aux_loss_forward<double>(const double*, const int32_t*, int64_t, int64_t, int64_t, int64_t,
                                             double, const double*);
template void moe_aux_loss_backward<float>(const float*, const int32_t*, int64_t, int64_t, int64_t, int64_t, double,
                                           double, float*, const double*);
template void moe_aux_loss_backward<double>(const double*, const int32_t*, int64_t, int64_t, int64_t, int64_t, double,
                                            double, double*, const double*);
template double moe_z_loss_forward<float>(const float*, int64_t, int64_t, double);
template double moe_z_loss_forward<double>(const double*, int64_t, int64_t, double);
template void moe_z_loss_backward<float>(const float*, int64_t, int64_t, double, double, float*);
template void moe_z_loss_backward<double>(const double*, int64_t, int64_t, double, double, double*);

}  // namespace ref

namespace {
// scores [N, E], topk_idx i32 [N, K] with entries in [0, E), seq_len dividing N (> 0).
void check_aux(const char* op, const Tensor& scores, const Tensor& topk_idx, int64_t seq_len,
               const std::vector<double>& fractions) {
  check_ndim(op, "scores", scores, 2, 2);
  check_ndim(op, "topk_idx", topk_idx, 2, 2);
  const int64_t N = scores.size(0), E = scores.size(1), K = topk_idx.size(1);
  check_shape(op, "topk_idx", topk_idx, {N, K});
  check_dtype(op, "topk_idx", topk_idx, DType::I32);
  MOELAB_CHECK(K >= 1 && K <= E, op, ": topk_idx is ", topk_idx.str(), " but scores ", scores.str(),
               " has E = ", E, " experts; expected 1 <= K <= E");
  MOELAB_CHECK(seq_len >= 1 && N % seq_len == 0, op, ": seq_len = ", seq_len, " must be >= 1 and divide the ", N,
               " rows of scores ", scores.str());
  MOELAB_CHECK(fractions.empty() || (seq_len == N && static_cast<int64_t>(fractions.size()) == E), op,
               ": batch_fractions has ", fractions.size(), " values with seq_len ", seq_len, " of ", N,
               " rows; expected E = ", E, " values for the whole batch (seq_len = rows)");
  check_same_device(op, {{"scores", &scores}, {"topk_idx", &topk_idx}});
  if (scores.device() == Device::CUDA) {  // the indices are checked on the device (cuda/moe_balance.h)
    check_dtype(op, "scores", scores, DType::F32);
    MOELAB_CHECK(E <= cuda::kMoeBalanceMaxExperts, op, ": E = ", E, " experts; the CUDA kernel takes at most ",
                 cuda::kMoeBalanceMaxExperts);
    return;
  }
  // Before the parallel loops: an exception must not leave an OpenMP region.
  const int32_t* idx = topk_idx.data<int32_t>();
  for (int64_t i = 0; i < topk_idx.numel(); ++i)
    MOELAB_CHECK(idx[i] >= 0 && idx[i] < E, op, ": topk_idx[", i / K, ", ", i % K, "] is ", idx[i],
                 ", expected an expert in [0, E = ", E, ") (the selection before capacity drops)");
}

void check_logits(const char* op, const Tensor& logits) {
  check_ndim(op, "logits", logits, 2, 2);
  MOELAB_CHECK(logits.size(0) >= 1 && logits.size(1) >= 1, op, ": logits is ", logits.str(),
               ", expected at least one row and one expert");
  if (logits.device() == Device::CUDA) check_dtype(op, "logits", logits, DType::F32);
}

// The forwards' output: one f64 on the input's device.
void check_loss_output(const char* op, const Tensor& input, const Tensor& loss) {
  check_shape(op, "loss", loss, {1});
  check_dtype(op, "loss", loss, DType::F64);
  check_same_device(op, {{"the input", &input}, {"loss", &loss}});
}

// The launch parameters of the aux loss on CUDA, with its device workspace taken from the op's
// scratch (a device allocation per call would synchronise the device): f [B, E] and the per-row
// values [N] (f32), the out-of-range index counts [B] (i32).
// Given batch fractions go up as f32 (one small copy): the kernels read f in f32 either way.
cuda::MoeAuxLossParams aux_params(const Exec& ex, ScratchScope& scratch, const Tensor& scores, const Tensor& topk_idx,
                                  int64_t seq_len, double alpha, const std::vector<double>& fractions) {
  const int64_t N = scores.size(0), E = scores.size(1), B = N / seq_len;
  const Tensor f = scratch.take({B * E + N}, DType::F32);  // f [B, E], then the per-row values [N]
  cuda::MoeAuxLossParams p;
  if (!fractions.empty()) {
    Tensor host = Tensor::empty({E}, DType::F32);
    for (int64_t i = 0; i < E; ++i) host.data<float>()[i] = static_cast<float>(fractions[static_cast<size_t>(i)]);
    f.slice(0, E).copy_from(host);
    p.f_given = true;
  }
  const Tensor invalid = scratch.take({B}, DType::I32);
  p.scores = scores.data<float>();
  p.topk_idx = topk_idx.data<int32_t>();
  p.rows = N;
  p.E = E;
  p.K = topk_idx.size(1);
  p.seq_len = seq_len;
  p.f = f.data<float>();
  p.invalid = invalid.data<int32_t>();
  p.row_values = f.data<float>() + B * E;
  p.alpha = alpha;
  p.stream = ex.stream;
  return p;
}
}  // namespace

void moe_aux_loss_forward(const Exec& ex, const Tensor& scores, const Tensor& topk_idx, int64_t seq_len, double alpha,
                          const Tensor& loss, const std::vector<double>& batch_fractions) {
  const char* op = "moe_aux_loss_forward";
  check_aux(op, scores, topk_idx, seq_len, batch_fractions);
  check_loss_output(op, scores, loss);
  const double* given = batch_fractions.empty() ? nullptr : batch_fractions.data();
  if (scores.device() == Device::CUDA) {
    ScratchScope scratch(ex, op);
    cuda::MoeAuxLossParams p = aux_params(ex, scratch, scores, topk_idx, seq_len, alpha, batch_fractions);
    p.loss = loss.data<double>();
    p.loss_denominator = static_cast<double>(scores.size(0) / seq_len) * static_cast<double>(seq_len);  // the CPU's
    cuda::moe_aux_loss_forward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, scores, [&](auto tag) {
    using T = decltype(tag);
    loss.data<double>()[0] = ref::moe_aux_loss_forward<T>(scores.data<T>(), topk_idx.data<int32_t>(), scores.size(0),
                                                          scores.size(1), topk_idx.size(1), seq_len, alpha, given);
  });
}

void moe_aux_loss_backward(const Exec& ex, const Tensor& scores, const Tensor& topk_idx, int64_t seq_len, double alpha,
                           double grad_loss, const Tensor& grad_scores, const std::vector<double>& batch_fractions) {
  const char* op = "moe_aux_loss_backward";
  check_aux(op, scores, topk_idx, seq_len, batch_fractions);
  const double* given = batch_fractions.empty() ? nullptr : batch_fractions.data();
  check_shape(op, "grad_scores", grad_scores, scores.shape());
  check_dtype(op, "grad_scores", grad_scores, scores.dtype());
  check_same_device(op, {{"scores", &scores}, {"grad_scores", &grad_scores}});
  if (scores.device() == Device::CUDA) {
    ScratchScope scratch(ex, op);
    cuda::MoeAuxLossParams p = aux_params(ex, scratch, scores, topk_idx, seq_len, alpha, batch_fractions);
    p.grad_loss = grad_loss;
    p.grad_scores = grad_scores.data<float>();
    cuda::moe_aux_loss_backward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, scores, [&](auto tag) {
    using T = decltype(tag);
    ref::moe_aux_loss_backward<T>(scores.data<T>(), topk_idx.data<int32_t>(), scores.size(0), scores.size(1),
                                  topk_idx.size(1), seq_len, alpha, grad_loss, grad_scores.data<T>(), given);
  });
}

void moe_z_loss_forward(const Exec& ex, const Tensor& logits, double coef, const Tensor& loss) {
  const char* op = "moe_z_loss_forward";
  check_logits(op, logits);
  check_loss_output(op, logits, loss);
  if (logits.device() == Device::CUDA) {
    const int64_t N = logits.size(0);
    // The per-row values, from the op's scratch (no device allocation per call).
    ScratchScope scratch(ex, op);
    const Tensor rows = scratch.take({N}, DType::F32);
    cuda::MoeZLossParams p;
    p.logits = logits.data<float>();
    p.rows = N;
    p.E = logits.size(1);
    p.row_values = rows.data<float>();
    p.loss = loss.data<double>();
    p.coef = coef;
    p.stream = ex.stream;
    cuda::moe_z_loss_forward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, logits, [&](auto tag) {
    using T = decltype(tag);
    loss.data<double>()[0] = ref::moe_z_loss_forward<T>(logits.data<T>(), logits.size(0), logits.size(1), coef);
  });
}

void moe_z_loss_backward(const Exec& ex, const Tensor& logits, double coef, double grad_loss,
                         const Tensor& grad_logits) {
  const char* op = "moe_z_loss_backward";
  check_logits(op, logits);
  check_shape(op, "grad_logits", grad_logits, logits.shape());
  check_dtype(op, "grad_logits", grad_logits, logits.dtype());
  check_same_device(op, {{"logits", &logits}, {"grad_logits", &grad_logits}});
  if (logits.device() == Device::CUDA) {
    cuda::MoeZLossParams p;  // no workspace: the backward only adds to grad_logits
    p.logits = logits.data<float>();
    p.rows = logits.size(0);
    p.E = logits.size(1);
    p.coef = coef;
    p.grad_loss = grad_loss;
    p.grad_logits = grad_logits.data<float>();
    p.stream = ex.stream;
    cuda::moe_z_loss_backward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, logits, [&](auto tag) {
    using T = decltype(tag);
    ref::moe_z_loss_backward<T>(logits.data<T>(), logits.size(0), logits.size(1), coef, grad_loss,
                                grad_logits.data<T>());
  });
}

}  // namespace moelab
