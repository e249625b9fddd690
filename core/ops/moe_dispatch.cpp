// MoE dispatch and combine: argument checks + dispatch, and the CPU reference (the specification).
#include "core/ops/moe_dispatch.h"

#include <algorithm>
#include <limits>

#include "core/ops/op_util.h"
#include "cuda/moe_dispatch.h"

namespace moelab {

namespace ref {

template <typename T>
void moe_dispatch_forward(const T* x, const int32_t* pos, T* expert_x, int64_t N, int64_t K, int64_t D) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t p = pos[n * K + k]; p >= 0) std::copy_n(x + n * D, D, expert_x + p * D);
}

template <typename T>
void moe_dispatch_backward(const T* grad_expert_x, const int32_t* pos, T* grad_x, int64_t N, int64_t K, int64_t D) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    T* gx = grad_x + n * D;
    std::fill_n(gx, D, T(0));
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t p = pos[n * K + k]; p >= 0)
        for (int64_t d = 0; d < D; ++d) gx[d] += grad_expert_x[p * D + d];
  }
}

template <typename T>
void moe_combine_forward(const T* expert_y, const int32_t* pos, const T* topk_weights, T* y, int64_t N, int64_t K,
                         int64_t D) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    T* yn = y + n * D;
    std::fill_n(yn, D, T(0));
    for (int64_t k = 0; k < K; ++k)
      if (const int32_t p = pos[n * K + k]; p >= 0)
        for (int64_t d = 0; d < D; ++d) yn[d] += topk_weights[n * K + k] * expert_y[p * D + d];
  }
}

template <typename T>
void moe_combine_backward(const T* grad_y, const T* expert_y, const int32_t* pos, const T* topk_weights,
                          T* grad_expert_y, T* grad_topk_weights, int64_t N, int64_t K, int64_t D) {
#pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const T* gy = grad_y + n * D;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t p = pos[n * K + k];
      T dot = 0;
      if (p >= 0) {
        const T w = topk_weights[n * K + k];
        for (int64_t d = 0; d < D; ++d) {
          grad_expert_y[p * D + d] = w * gy[d];
          dot += gy[d] * expert_y[p * D + d];
        }
      }
      grad_topk_weights[n * K + k] = dot;  // a dropped assignment's gate does not reach y
    }
  }
}

template void moe_dispatch_forward<float>(const float*, const int32_t*, float*, int64_t, int64_t, int64_t);
template void moe_dispatch_forward<double>(const double*, const int32_t*, double*, int64_t, int64_t, int64_t);
template void moe_dispatch_backward<float>(const float*, const int32_t*, float*, int64_t, int64_t, int64_t);
template void moe_dispatch_backward<double>(const double*, const int32_t*, double*, int64_t, int64_t, int64_t);
template void moe_combine_forward<float>(const float*, const int32_t*, const float*, float*, int64_t, int64_t, int64_t);
template void moe_combine_forward<double>(const double*, const int32_t*, const double*, double*, int64_t, int64_t,
                                          int64_t);
template void moe_combine_backward<float>(const float*, const float*, const int32_t*, const float*, float*, float*,
                                          int64_t, int64_t, int64_t);
template void moe_combine_backward<double>(const double*, const double*, const int32_t*, const double*, double*,
                                           double*, int64_t, int64_t, int64_t);

}  // namespace ref

namespace {
// pos: i32 [N, K] on the device of the token side. On the CPU, also: the entries >= 0 map one to
// one onto the rows [0, M) of the expert buffer (checked before the parallel loops: an exception
// must not leave an OpenMP region). On CUDA pos is not read on the host (cuda/moe_dispatch.h).
void check_pos(const char* op, const Tensor& pos, int64_t N, int64_t M, Device device) {
  check_ndim(op, "pos", pos, 2, 2);
  MOELAB_CHECK(pos.size(0) == N, op, ": pos is ", pos.str(), ", expected ", N, " rows (one per token)");
  check_dtype(op, "pos", pos, DType::I32);
  MOELAB_CHECK(pos.device() == device, op, ": pos is ", pos.str(), ", expected a ",
               device == Device::CPU ? "CPU" : "CUDA", " tensor like the others");
  if (device == Device::CUDA) return;
  const int32_t* p = pos.data<int32_t>();
  const int64_t K = pos.size(1);
  std::vector<char> seen(M, 0);
  int64_t kept = 0;
  for (int64_t i = 0; i < pos.numel(); ++i) {
    if (p[i] < 0) continue;
    MOELAB_CHECK(p[i] < M && !seen[p[i]], op, ": pos[", i / K, ", ", i % K, "] = ", p[i],
                 (p[i] < M ? " occurs twice" : " is past the expert rows"), "; expected a one-to-one map onto [0, M = ",
                 M, ")");
    seen[p[i]] = 1;
    ++kept;
  }
  MOELAB_CHECK(kept == M, op, ": pos keeps ", kept, " assignments but the expert buffer has M = ", M, " rows");
}

// The token side [N, D] and the expert side [M, D] of one call: 2-D, same D, same dtype and device.
void check_sides(const char* op, const char* tok_name, const Tensor& tok, const char* exp_name, const Tensor& exp) {
  check_ndim(op, tok_name, tok, 2, 2);
  check_ndim(op, exp_name, exp, 2, 2);
  MOELAB_CHECK(tok.size(1) == exp.size(1), op, ": ", exp_name, " is ", exp.str(), " but ", tok_name, " is ",
               tok.str(), "; expected the same D");
  check_dtype(op, exp_name, exp, tok.dtype());
  check_same_device(op, {{tok_name, &tok}, {exp_name, &exp}});
  if (tok.device() == Device::CUDA)
    MOELAB_CHECK(tok.dtype() == DType::F32 || tok.dtype() == DType::BF16, op, ": ", tok_name, " is ", tok.str(),
                 ", expected f32 or bf16 on CUDA");
}

// topk_weights (and grad_topk_weights): the activations' dtype on the CPU, f32 on CUDA.
void check_weights(const char* op, const char* name, const Tensor& w, const Tensor& act) {
  check_dtype(op, name, w, act.device() == Device::CUDA ? DType::F32 : act.dtype());
}
}  // namespace

std::vector<int64_t> moe_dispatch_layout(const Exec& ex, const Tensor& topk_idx, int64_t num_experts,
                                         const Tensor& pos) {
  const char* op = "moe_dispatch_layout";
  check_ndim(op, "topk_idx", topk_idx, 2, 2);
  check_dtype(op, "topk_idx", topk_idx, DType::I32);
  check_shape(op, "pos", pos, topk_idx.shape());
  check_dtype(op, "pos", pos, DType::I32);
  check_same_device(op, {{"topk_idx", &topk_idx}, {"pos", &pos}});
  if (pos.device() == Device::CUDA) {
    MOELAB_CHECK(topk_idx.numel() <= std::numeric_limits<int32_t>::max(), op, ": ", topk_idx.str(),
                 " holds more assignments than i32 positions can number");
    MOELAB_CHECK(num_experts >= 0 && num_experts <= cuda::kMoeLayoutMaxExperts, op, ": E = ", num_experts,
                 " experts; the CUDA kernel takes at most ", cuda::kMoeLayoutMaxExperts);
    // The device counters come from the op's scratch: a device allocation would synchronise the device.
    ScratchScope scratch(ex, op);
    const Tensor counts = scratch.take({num_experts + 1}, DType::I32);
    std::vector<int32_t> host(num_experts + 1);
    cuda::MoeDispatchLayoutParams p;
    p.topk_idx = topk_idx.data<int32_t>();
    p.numel = topk_idx.numel();
    p.num_experts = num_experts;
    p.min_index = -1;  // -1 marks an assignment the capacity dropped: it gets no row
    p.pos = pos.data<int32_t>();
    p.counts = counts.data<int32_t>();
    p.host_counts = host.data();
    p.stream = ex.stream;
    cuda::moe_dispatch_layout(p);
    MOELAB_CHECK(host[num_experts] == 0, op, ": topk_idx holds ", host[num_experts], " entries outside [-1, E = ",
                 num_experts, "); expected experts or -1 (dropped)");
    return std::vector<int64_t>(host.begin(), host.end() - 1);
  }
  const int32_t* idx = topk_idx.data<int32_t>();
  const int64_t K = topk_idx.size(1), numel = topk_idx.numel();
  // A counting sort: count the rows of each expert, turn the counts into each expert's first row,
  // then hand out rows in token order.
  std::vector<int64_t> counts(num_experts, 0);
  for (int64_t i = 0; i < numel; ++i) {
    MOELAB_CHECK(idx[i] >= -1 && idx[i] < num_experts, op, ": topk_idx[", i / K, ", ", i % K, "] is ", idx[i],
                 ", expected an expert in [0, E = ", num_experts, ") or -1 (dropped)");
    if (idx[i] >= 0) ++counts[idx[i]];
  }
  std::vector<int64_t> next(num_experts, 0);
  for (int64_t e = 1; e < num_experts; ++e) next[e] = next[e - 1] + counts[e - 1];
  int32_t* p = pos.data<int32_t>();
  for (int64_t i = 0; i < numel; ++i) p[i] = idx[i] >= 0 ? static_cast<int32_t>(next[idx[i]]++) : -1;
  return counts;
}

void moe_dispatch_forward(const Exec& ex, const Tensor& x, const Tensor& pos, const Tensor& expert_x) {
  const char* op = "moe_dispatch_forward";
  check_sides(op, "x", x, "expert_x", expert_x);
  check_pos(op, pos, x.size(0), expert_x.size(0), x.device());
  if (x.device() == Device::CUDA) {
    cuda::MoeDispatchForwardParams p;
    p.x = x.raw();
    p.pos = pos.data<int32_t>();
    p.expert_x = expert_x.raw();
    p.N = x.size(0);
    p.K = pos.size(1);
    p.D = x.size(1);
    p.M = expert_x.size(0);
    p.bf16 = x.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::moe_dispatch_forward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, x, [&](auto tag) {
    using T = decltype(tag);
    ref::moe_dispatch_forward<T>(x.data<T>(), pos.data<int32_t>(), expert_x.data<T>(), x.size(0), pos.size(1),
                                 x.size(1));
  });
}

void moe_dispatch_backward(const Exec& ex, const Tensor& grad_expert_x, const Tensor& pos, const Tensor& grad_x) {
  const char* op = "moe_dispatch_backward";
  check_sides(op, "grad_x", grad_x, "grad_expert_x", grad_expert_x);
  check_pos(op, pos, grad_x.size(0), grad_expert_x.size(0), grad_x.device());
  if (grad_x.device() == Device::CUDA) {
    cuda::MoeDispatchBackwardParams p;
    p.grad_expert_x = grad_expert_x.raw();
    p.pos = pos.data<int32_t>();
    p.grad_x = grad_x.raw();
    p.N = grad_x.size(0);
    p.K = pos.size(1);
    p.D = grad_x.size(1);
    p.M = grad_expert_x.size(0);
    p.bf16 = grad_x.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::moe_dispatch_backward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, grad_x, [&](auto tag) {
    using T = decltype(tag);
    ref::moe_dispatch_backward<T>(grad_expert_x.data<T>(), pos.data<int32_t>(), grad_x.data<T>(), grad_x.size(0),
                                  pos.size(1), grad_x.size(1));
  });
}

void moe_combine_forward(const Exec& ex, const Tensor& expert_y, const Tensor& pos, const Tensor& topk_weights,
                         const Tensor& y) {
  const char* op = "moe_combine_forward";
  check_sides(op, "y", y, "expert_y", expert_y);
  check_pos(op, pos, y.size(0), expert_y.size(0), y.device());
  check_shape(op, "topk_weights", topk_weights, pos.shape());
  check_weights(op, "topk_weights", topk_weights, y);
  check_same_device(op, {{"y", &y}, {"pos", &pos}, {"topk_weights", &topk_weights}});
  if (y.device() == Device::CUDA) {
    cuda::MoeCombineForwardParams p;
    p.expert_y = expert_y.raw();
    p.pos = pos.data<int32_t>();
    p.topk_weights = topk_weights.data<float>();
    p.y = y.raw();
    p.N = y.size(0);
    p.K = pos.size(1);
    p.D = y.size(1);
    p.M = expert_y.size(0);
    p.bf16 = y.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::moe_combine_forward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, y, [&](auto tag) {
    using T = decltype(tag);
    ref::moe_combine_forward<T>(expert_y.data<T>(), pos.data<int32_t>(), topk_weights.data<T>(), y.data<T>(),
                                y.size(0), pos.size(1), y.size(1));
  });
}

void moe_combine_backward(const Exec& ex, const Tensor& grad_y, const Tensor& expert_y, const Tensor& pos,
                          const Tensor& topk_weights, const Tensor& grad_expert_y, const Tensor& grad_topk_weights) {
  const char* op = "moe_combine_backward";
  check_sides(op, "grad_y", grad_y, "expert_y", expert_y);
  check_sides(op, "grad_y", grad_y, "grad_expert_y", grad_expert_y);
  check_shape(op, "grad_expert_y", grad_expert_y, expert_y.shape());
  check_pos(op, pos, grad_y.size(0), expert_y.size(0), grad_y.device());
  check_shape(op, "topk_weights", topk_weights, pos.shape());
  check_shape(op, "grad_topk_weights", grad_topk_weights, pos.shape());
  check_weights(op, "topk_weights", topk_weights, grad_y);
  check_weights(op, "grad_topk_weights", grad_topk_weights, grad_y);
  check_same_device(op, {{"grad_y", &grad_y}, {"pos", &pos}, {"topk_weights", &topk_weights},
                         {"grad_topk_weights", &grad_topk_weights}});
  if (grad_y.device() == Device::CUDA) {
    cuda::MoeCombineBackwardParams p;
    p.grad_y = grad_y.raw();
    p.expert_y = expert_y.raw();
    p.pos = pos.data<int32_t>();
    p.topk_weights = topk_weights.data<float>();
    p.grad_expert_y = grad_expert_y.raw();
    p.grad_topk_weights = grad_topk_weights.data<float>();
    p.N = grad_y.size(0);
    p.K = pos.size(1);
    p.D = grad_y.size(1);
    p.M = expert_y.size(0);
    p.bf16 = grad_y.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::moe_combine_backward(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, grad_y, [&](auto tag) {
    using T = decltype(tag);
    ref::moe_combine_backward<T>(grad_y.data<T>(), expert_y.data<T>(), pos.data<int32_t>(), topk_weights.data<T>(),
                                 grad_expert_y.data<T>(), grad_topk_weights.data<T>(), grad_y.size(0), pos.size(1),
                                 grad_y.size(1));
  });
}

}  // namespace moelab
