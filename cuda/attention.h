// Launchers for causal softmax attention (core/ops/attention.h has the math and the contract).
// q, k, v, out, grad_out, grad_q, grad_k, grad_v are f32 or bf16 as `bf16` says; lse is f32; all
// the math runs in f32. Two kernel families, chosen by `kernel`:
//   Flash:     fused, flash-attention style. Forward: online softmax over key tiles staged in
//              shared memory, no T x T matrix anywhere; writes out and lse. Backward recomputes
//              P from q, k and the saved lse, and D_t = grad_out_t . out_t per query row; grad_q
//              comes from a query-major kernel, grad_k/grad_v from a key-major kernel that walks
//              the query heads of its KV group and the queries t >= j in a fixed order (one writer
//              per element, no atomics: deterministic).
//   Reference: one thread per output row, plain loops over the keys (forward: a max pass, then an
//              exp/sum/accumulate pass); the readable specification on the GPU, checked against the
//              CPU and against Flash by tests/gpu/test_attention_cuda.cpp.
// Both take any B, T, H, Hkv (H % Hkv == 0) and head dims Dqk, Dv <= kAttentionMaxHeadDim.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

// The largest Dqk and Dv the kernels take (the flash kernels keep a row of the output / gradient
// as 256 / 32 = 8 registers per lane; the reference kernels a 256-float array per thread).
constexpr int64_t kAttentionMaxHeadDim = 256;

enum class AttentionKernel { Flash, Reference };

struct AttentionForwardParams {
  const void* q = nullptr;  // [B, T, H, Dqk]
  const void* k = nullptr;  // [B, T, Hkv, Dqk]
  const void* v = nullptr;  // [B, T, Hkv, Dv]
  void* out = nullptr;      // [B, T, H, Dv], overwritten
  float* lse = nullptr;     // [B, H, T], overwritten
  int64_t B = 0, T = 0, H = 0, Hkv = 0, Dqk = 0, Dv = 0;
  float scale = 0.0f;
  bool bf16 = false;
  AttentionKernel kernel = AttentionKernel::Flash;
  Stream stream = nullptr;
};

struct AttentionBackwardParams {
  const void* grad_out = nullptr;  // [B, T, H, Dv]
  const void* q = nullptr;         // [B, T, H, Dqk]
  const void* k = nullptr;         // [B, T, Hkv, Dqk]
  const void* v = nullptr;         // [B, T, Hkv, Dv]
  const void* out = nullptr;       // [B, T, H, Dv] (the forward's)
  const float* lse = nullptr;      // [B, H, T] (the forward's)
  void* grad_q = nullptr;          // [B, T, H, Dqk], overwritten
  void* grad_k = nullptr;          // [B, T, Hkv, Dqk], overwritten
  void* grad_v = nullptr;          // [B, T, Hkv, Dv], overwritten
  int64_t B = 0, T = 0, H = 0, Hkv = 0, Dqk = 0, Dv = 0;
  float scale = 0.0f;
  bool bf16 = false;
  AttentionKernel kernel = AttentionKernel::Flash;
  Stream stream = nullptr;
};

// Throw moelab::cuda::CudaError on a CUDA failure, std::invalid_argument on dims the kernels do
// not take (the op checks them first with its own message).
void attention_forward(const AttentionForwardParams& p);
void attention_backward(const AttentionBackwardParams& p);

}  // namespace moelab::cuda
