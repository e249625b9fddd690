// MoE routing: argument checks + dispatch, and the CPU reference (the specification).
#include "core/ops/moe_route.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/ops/op_util.h"
#include "cuda/moe_dispatch.h"
#include "cuda/moe_route.h"

namespace moelab {

namespace ref {

namespace {
// "x scores higher than y": larger first, NaN above every number (as torch.topk). A strict weak
// order even with NaNs, which a plain `x > y` is not (std::sort would be undefined).
template <typename T>
bool higher(T x, T y) {
  return std::isnan(x) ? !std::isnan(y) : !std::isnan(y) && x > y;
}

// "a ranks before b" among the values v: a strict total order (equal values go to the lower index),
// so the selection and its order never depend on the sort algorithm.
template <typename T>
bool ranks_before(const T* v, int32_t a, int32_t b) {
  if (higher(v[a], v[b])) return true;
  if (higher(v[b], v[a])) return false;
  return a < b;
}

// The first k entries of order (any permutation of 0..size-1) become the k best of v, best first.
template <typename T>
void best_k(const T* v, std::vector<int32_t>& order, int64_t k) {
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [v](int32_t a, int32_t b) { return ranks_before(v, a, b); });
}
}  // namespace

template <typename T>
void moe_route_topk(const T* scores, const T* bias, int32_t* topk_idx, int64_t rows, int64_t E, int64_t K,
                    int64_t n_group, int64_t topk_group, int64_t group_topk) {
  const int64_t per_group = E / n_group;
  // How many of a group's best selection scores its score sums: 0 asks for HF's rule, the top 2
  // with a bias (V3) and the best alone without (V2). The API checks that a group holds that many.
  const int64_t summed = group_topk > 0 ? group_topk : (bias ? 2 : 1);
#pragma omp parallel
  {
    std::vector<T> sel(E), group_score(n_group);
    std::vector<int32_t> order(E), group_order(n_group), in_group(per_group);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < rows; ++n) {
      const T* s = scores + n * E;
      for (int64_t e = 0; e < E; ++e) sel[e] = bias ? s[e] + bias[e] : s[e];
      if (n_group > 1) {
        // Group score: the sum of the group's `summed` best selection scores, added best first
        // (the CUDA kernel adds them in the same order, so both round alike).
        for (int64_t g = 0; g < n_group; ++g) {
          const T* sg = sel.data() + g * per_group;
          best_k(sg, in_group, summed);
          T sum = sg[in_group[0]];
          for (int64_t j = 1; j < summed; ++j) sum += sg[in_group[j]];
          group_score[g] = sum;
        }
        best_k(group_score.data(), group_order, topk_group);
        // Mask every expert of a group that lost: it can not be chosen, whatever its score.
        for (int64_t j = topk_group; j < n_group; ++j)
          std::fill_n(sel.data() + group_order[j] * per_group, per_group, -std::numeric_limits<T>::infinity());
      }
      best_k(sel.data(), order, K);
      std::copy_n(order.begin(), K, topk_idx + n * K);
    }
  }
}

template <typename T>
void moe_gate_forward(const T* scores, const int32_t* topk_idx, bool norm_topk_prob, T scale, T* topk_weights,
                      int64_t rows, int64_t E, int64_t K) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const T* s = scores + n * E;
    const int32_t* idx = topk_idx + n * K;
    T denom = 1;
    if (norm_topk_prob) {
      denom = static_cast<T>(kMoeNormEps);
      for (int64_t k = 0; k < K; ++k) denom += s[idx[k]];
    }
    for (int64_t k = 0; k < K; ++k) topk_weights[n * K + k] = s[idx[k]] / denom * scale;
  }
}

template <typename T>
void moe_gate_backward(const T* grad_topk_weights, const T* scores, const int32_t* topk_idx, bool norm_topk_prob,
                       T scale, T* grad_scores, int64_t rows, int64_t E, int64_t K) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < rows; ++n) {
    const T* s = scores + n * E;
    const T* gg = grad_topk_weights + n * K;
    const int32_t* idx = topk_idx + n * K;
    T* gs = grad_scores + n * E;
    std::fill_n(gs, E, T(0));
    if (!norm_topk_prob) {
      for (int64_t k = 0; k < K; ++k) gs[idx[k]] = scale * gg[k];
      continue;
    }
    T denom = static_cast<T>(kMoeNormEps), dot = 0;  // S and sum_k grad_g_k * s_k
    for (int64_t k = 0; k < K; ++k) {
      denom += s[idx[k]];
      dot += gg[k] * s[idx[k]];
    }
    for (int64_t k = 0; k < K; ++k) gs[idx[k]] = scale / denom * (gg[k] - dot / denom);
  }
}

template <typename T>
int64_t moe_capacity_drop(const T* scores, const int32_t* topk_idx, int64_t capacity, int32_t* kept_idx,
                          int64_t rows, int64_t E, int64_t K) {
  std::copy_n(topk_idx, rows * K, kept_idx);
  // Each expert's assignments as flat positions n * K + k, in token order.
  std::vector<std::vector<int64_t>> slots(E);
  for (int64_t i = 0; i < rows * K; ++i) slots[topk_idx[i]].push_back(i);
  int64_t dropped = 0;
#pragma omp parallel for schedule(dynamic) reduction(+ : dropped)
  for (int64_t e = 0; e < E; ++e) {
    std::vector<int64_t>& mine = slots[e];
    if (static_cast<int64_t>(mine.size()) <= capacity) continue;
    // Highest unbiased score first; a token selects an expert at most once, so equal scores are
    // ordered by the token (the slots are in token order and the sort is stable).
    std::stable_sort(mine.begin(), mine.end(),
                     [&](int64_t a, int64_t b) { return higher(scores[a / K * E + e], scores[b / K * E + e]); });
    for (size_t j = capacity; j < mine.size(); ++j) kept_idx[mine[j]] = -1;
    dropped += static_cast<int64_t>(mine.size()) - capacity;
  }
  return dropped;
}

template void moe_route_topk<float>(const float*, const float*, int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                    int64_t);
template void moe_route_topk<double>(const double*, const double*, int32_t*, int64_t, int64_t, int64_t, int64_t,
                                     int64_t, int64_t);
template void moe_gate_forward<float>(const float*, const int32_t*, bool, float, float*, int64_t, int64_t, int64_t);
template void moe_gate_forward<double>(const double*, const int32_t*, bool, double, double*, int64_t, int64_t,
                                       int64_t);
template void moe_gate_backward<float>(const float*, const float*, const int32_t*, bool, float, float*, int64_t,
                                       int64_t, int64_t);
template void moe_gate_backward<double>(const double*, const double*, const int32_t*, bool, double, double*, int64_t,
                                        int64_t, int64_t);
template int64_t moe_capacity_drop<float>(const float*, const int32_t*, int64_t, int32_t*, int64_t, int64_t, int64_t);
template int64_t moe_capacity_drop<double>(const double*, const int32_t*, int64_t, int32_t*, int64_t, int64_t,
                                           int64_t);

}  // namespace ref

namespace {
// scores [N, E] (f32/f64, CPU) and an i32 index tensor [N, K] with 1 <= K <= E; returns {N, E, K}.
struct Dims { int64_t n, e, k; };
Dims check_route(const char* op, const Tensor& scores, const char* idx_name, const Tensor& idx) {
  check_ndim(op, "scores", scores, 2, 2);
  check_ndim(op, idx_name, idx, 2, 2);
  const int64_t N = scores.size(0), E = scores.size(1), K = idx.size(1);
  check_shape(op, idx_name, idx, {N, K});
  check_dtype(op, idx_name, idx, DType::I32);
  MOELAB_CHECK(K >= 1 && K <= E, op, ": ", idx_name, " is ", idx.str(), " but scores ", scores.str(),
               " has E = ", E, " experts; expected 1 <= K <= E");
  MOELAB_CHECK(E <= std::numeric_limits<int32_t>::max(), op, ": E = ", E, " does not fit the i32 indices");
  check_same_device(op, {{"scores", &scores}, {idx_name, &idx}});
  return {N, E, K};
}

// On CUDA the router tensors are f32 (DESIGN.md, "Precision"); the others were checked to share
// the scores' dtype.
void check_cuda_scores(const char* op, const Tensor& scores) { check_dtype(op, "scores", scores, DType::F32); }

// The assignments of the one-block layout kernel: i32 positions, one shared counter per expert.
void check_cuda_layout(const char* op, const Tensor& idx, int64_t E) {
  MOELAB_CHECK(idx.numel() <= std::numeric_limits<int32_t>::max(), op, ": ", idx.str(),
               " holds more assignments than i32 positions can number");
  MOELAB_CHECK(E >= 0 && E <= cuda::kMoeLayoutMaxExperts, op, ": E = ", E, " experts; the CUDA kernel takes at most ",
               cuda::kMoeLayoutMaxExperts);
}

// Every index in [lo, E); checked before the parallel loops (an exception must not leave an OpenMP
// region). lo = -1 admits the dropped marker.
void check_indices(const char* op, const char* name, const Tensor& idx, int64_t E, int32_t lo) {
  const int32_t* p = idx.data<int32_t>();
  const int64_t K = idx.size(1);
  for (int64_t i = 0; i < idx.numel(); ++i)
    MOELAB_CHECK(p[i] >= lo && p[i] < E, op, ": ", name, "[", i / K, ", ", i % K, "] is ", p[i],
                 ", expected an expert in [", lo, ", E = ", E, ")");
}
}  // namespace

void moe_route_topk(const Exec& ex, const Tensor& scores, const Tensor& bias, int64_t n_group, int64_t topk_group,
                    int64_t group_topk, const Tensor& topk_idx) {
  const char* op = "moe_route_topk";
  const Dims d = check_route(op, scores, "topk_idx", topk_idx);
  const int64_t N = d.n, E = d.e, K = d.k;  // named (not bound): lambdas capture them
  if (bias.defined()) {
    check_shape(op, "bias", bias, {E});
    check_dtype(op, "bias", bias, scores.dtype());
    check_same_device(op, {{"scores", &scores}, {"bias", &bias}});
  }
  MOELAB_CHECK(n_group >= 1 && E % n_group == 0, op, ": n_group = ", n_group, " must be >= 1 and divide E = ", E);
  MOELAB_CHECK(topk_group >= 1 && topk_group <= n_group, op, ": topk_group = ", topk_group,
               ", expected 1 <= topk_group <= n_group = ", n_group);
  MOELAB_CHECK(topk_group * (E / n_group) >= K, op, ": the topk_group = ", topk_group, " kept groups of ",
               E / n_group, " experts hold fewer than K = ", K, " experts");
  MOELAB_CHECK(group_topk >= 0 && group_topk <= E / n_group, op, ": group_topk = ", group_topk,
               ", expected 0 <= group_topk <= the ", E / n_group, " experts per group (E = ", E, ", n_group = ",
               n_group, "; 0 = Hugging Face's rule)");
  MOELAB_CHECK(n_group == 1 || group_topk > 0 || !bias.defined() || E / n_group >= 2, op, ": n_group = ", n_group,
               " leaves ", E / n_group,
               " expert per group; with group_topk = 0, a biased group score sums the group's top 2");
  if (scores.device() == Device::CUDA) {
    check_cuda_scores(op, scores);
    MOELAB_CHECK(n_group <= cuda::kMoeRouteMaxGroups, op, ": n_group = ", n_group,
                 "; the CUDA kernel keeps at most ", cuda::kMoeRouteMaxGroups, " group scores in shared memory");
    cuda::MoeRouteTopkParams p;
    p.scores = scores.data<float>();
    p.bias = bias.defined() ? bias.data<float>() : nullptr;
    p.topk_idx = topk_idx.data<int32_t>();
    p.rows = N;
    p.E = E;
    p.K = K;
    p.n_group = n_group;
    p.topk_group = topk_group;
    p.group_topk = group_topk;
    p.stream = ex.stream;
    cuda::moe_route_topk(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, scores, [&](auto tag) {
    using T = decltype(tag);
    ref::moe_route_topk<T>(scores.data<T>(), bias.defined() ? bias.data<T>() : nullptr, topk_idx.data<int32_t>(), N,
                           E, K, n_group, topk_group, group_topk);
  });
}

void moe_gate_forward(const Exec& ex, const Tensor& scores, const Tensor& topk_idx, bool norm_topk_prob, double scale,
                      const Tensor& topk_weights) {
  const char* op = "moe_gate_forward";
  const Dims d = check_route(op, scores, "topk_idx", topk_idx);
  const int64_t N = d.n, E = d.e, K = d.k;  // named (not bound): lambdas capture them
  check_shape(op, "topk_weights", topk_weights, {N, K});
  check_dtype(op, "topk_weights", topk_weights, scores.dtype());
  check_same_device(op, {{"scores", &scores}, {"topk_weights", &topk_weights}});
  if (scores.device() == Device::CUDA) {
    check_cuda_scores(op, scores);
    cuda::MoeGateForwardParams p;
    p.scores = scores.data<float>();
    p.topk_idx = topk_idx.data<int32_t>();
    p.topk_weights = topk_weights.data<float>();
    p.rows = N;
    p.E = E;
    p.K = K;
    p.norm_topk_prob = norm_topk_prob;
    p.scale = static_cast<float>(scale);
    p.stream = ex.stream;
    cuda::moe_gate_forward(p);
    return;
  }
  check_indices(op, "topk_idx", topk_idx, E, 0);
  ops_detail::dispatch_cpu_float(op, scores, [&](auto tag) {
    using T = decltype(tag);
    ref::moe_gate_forward<T>(scores.data<T>(), topk_idx.data<int32_t>(), norm_topk_prob, static_cast<T>(scale),
                             topk_weights.data<T>(), N, E, K);
  });
}

void moe_gate_backward(const Exec& ex, const Tensor& grad_topk_weights, const Tensor& scores, const Tensor& topk_idx,
                       bool norm_topk_prob, double scale, const Tensor& grad_scores) {
  const char* op = "moe_gate_backward";
  const Dims d = check_route(op, scores, "topk_idx", topk_idx);
  const int64_t N = d.n, E = d.e, K = d.k;  // named (not bound): lambdas capture them
  check_shape(op, "grad_topk_weights", grad_topk_weights, {N, K});
  check_shape(op, "grad_scores", grad_scores, {N, E});
  check_dtype(op, "grad_topk_weights", grad_topk_weights, scores.dtype());
  check_dtype(op, "grad_scores", grad_scores, scores.dtype());
  check_same_device(op, {{"scores", &scores}, {"grad_topk_weights", &grad_topk_weights}, {"grad_scores", &grad_scores}});
  if (scores.device() == Device::CUDA) {
    check_cuda_scores(op, scores);
    cuda::MoeGateBackwardParams p;
    p.grad_topk_weights = grad_topk_weights.data<float>();
    p.scores = scores.data<float>();
    p.topk_idx = topk_idx.data<int32_t>();
    p.grad_scores = grad_scores.data<float>();
    p.rows = N;
    p.E = E;
    p.K = K;
    p.norm_topk_prob = norm_topk_prob;
    p.scale = static_cast<float>(scale);
    p.stream = ex.stream;
    cuda::moe_gate_backward(p);
    return;
  }
  check_indices(op, "topk_idx", topk_idx, E, 0);
  ops_detail::dispatch_cpu_float(op, scores, [&](auto tag) {
    using T = decltype(tag);
    ref::moe_gate_backward<T>(grad_topk_weights.data<T>(), scores.data<T>(), topk_idx.data<int32_t>(), norm_topk_prob,
                              static_cast<T>(scale), grad_scores.data<T>(), N, E, K);
  });
}

int64_t moe_capacity(double capacity_factor, int64_t tokens, int64_t k, int64_t num_experts) {
  MOELAB_CHECK(capacity_factor > 0, "moe_capacity: capacity_factor = ", capacity_factor,
               ", expected > 0 (0 means dropless: no capacity to compute)");
  MOELAB_CHECK(tokens >= 0 && k >= 1 && num_experts >= 1, "moe_capacity: tokens = ", tokens, ", k = ", k,
               ", num_experts = ", num_experts, "; expected tokens >= 0, k >= 1, num_experts >= 1");
  return static_cast<int64_t>(std::ceil(capacity_factor * static_cast<double>(tokens) * static_cast<double>(k) /
                                        static_cast<double>(num_experts)));
}

int64_t moe_capacity_drop(const Exec& ex, const Tensor& scores, const Tensor& topk_idx, int64_t capacity,
                          const Tensor& kept_idx) {
  const char* op = "moe_capacity_drop";
  const Dims d = check_route(op, scores, "topk_idx", topk_idx);
  const int64_t N = d.n, E = d.e, K = d.k;  // named (not bound): lambdas capture them
  check_shape(op, "kept_idx", kept_idx, {N, K});
  check_dtype(op, "kept_idx", kept_idx, DType::I32);
  check_same_device(op, {{"scores", &scores}, {"kept_idx", &kept_idx}});
  MOELAB_CHECK(capacity >= 0, op, ": capacity = ", capacity, ", expected >= 0");
  if (scores.device() == Device::CUDA) {
    check_cuda_scores(op, scores);
    check_cuda_layout(op, topk_idx, E);
    // Workspace from the op's scratch (a device allocation would synchronise the device): counts,
    // first rows and the assignments grouped by expert.
    ScratchScope scratch(ex, op);
    const Tensor workspace = scratch.take({cuda::moe_capacity_drop_workspace(N * K, E)}, DType::I32);
    std::vector<int32_t> counts(E + 1);
    cuda::MoeCapacityDropParams p;
    p.scores = scores.data<float>();
    p.topk_idx = topk_idx.data<int32_t>();
    p.kept_idx = kept_idx.data<int32_t>();
    p.rows = N;
    p.E = E;
    p.K = K;
    p.capacity = capacity;
    p.workspace = workspace.data<int32_t>();
    p.host_counts = counts.data();
    p.stream = ex.stream;
    cuda::moe_capacity_drop(p);
    MOELAB_CHECK(counts[E] == 0, op, ": topk_idx holds ", counts[E], " entries outside [0, E = ", E,
                 "); expected experts only");
    int64_t dropped = 0;
    for (int64_t e = 0; e < E; ++e) dropped += std::max<int64_t>(0, counts[e] - capacity);
    return dropped;
  }
  check_indices(op, "topk_idx", topk_idx, E, 0);
  int64_t dropped = 0;
  ops_detail::dispatch_cpu_float(op, scores, [&](auto tag) {
    using T = decltype(tag);
    dropped = ref::moe_capacity_drop<T>(scores.data<T>(), topk_idx.data<int32_t>(), capacity,
                                        kept_idx.data<int32_t>(), N, E, K);
  });
  return dropped;
}

void moe_count_tokens(const Exec& ex, const Tensor& topk_idx, const Tensor& counts) {
  const char* op = "moe_count_tokens";
  check_ndim(op, "topk_idx", topk_idx, 2, 2);
  check_dtype(op, "topk_idx", topk_idx, DType::I32);
  check_ndim(op, "counts", counts, 1, 1);
  check_dtype(op, "counts", counts, DType::F64);
  check_same_device(op, {{"topk_idx", &topk_idx}, {"counts", &counts}});
  const int64_t num_experts = counts.size(0);
  if (topk_idx.device() == Device::CUDA) {
    check_cuda_layout(op, topk_idx, num_experts);
    // The device counters come from the op's scratch (a device allocation would synchronise the device).
    ScratchScope scratch(ex, op);
    const Tensor workspace = scratch.take({num_experts + 1}, DType::I32);
    cuda::MoeDispatchLayoutParams p;  // the layout's histogram alone: no pos, order or offsets
    p.topk_idx = topk_idx.data<int32_t>();
    p.numel = topk_idx.numel();
    p.num_experts = num_experts;
    p.min_index = -1;  // -1 (dropped) is skipped, not an error
    p.counts = workspace.data<int32_t>();
    p.counts_f64 = counts.data<double>();
    p.stream = ex.stream;
    cuda::moe_dispatch_layout(p);
    return;
  }
  check_indices(op, "topk_idx", topk_idx, num_experts, -1);
  double* c = counts.data<double>();
  std::fill(c, c + num_experts, 0.0);
  const int32_t* p = topk_idx.data<int32_t>();
  for (int64_t i = 0; i < topk_idx.numel(); ++i)
    if (p[i] >= 0) c[p[i]] += 1.0;
}

}  // namespace moelab
