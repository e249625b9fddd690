// Launchers for the token embedding (core/ops/embedding.h has the math and the contract).
// Forward: out[n, :] = weight[ids[n], :], weight and out both f32 or both bf16 as `bf16` says (a
// plain copy, no rounding). Backward: grad_weight (f32) += the grad_out rows (f32 or bf16) of the
// tokens of each id, deterministically (no float atomics; see embedding.cu).
// Ids are checked on the device: a token whose id lies outside [0, vocab) is never read from or
// written to the table; instead *bad_pos (one word of scratch the caller passes) ends as the
// smallest flat position of such a token, or 0xffffffff when every id is valid. The caller reads
// it back and reports the error.
#pragma once

#include <cstddef>
#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct EmbeddingForwardParams {
  const int32_t* ids = nullptr;  // [tokens]
  const void* weight = nullptr;  // [vocab, dim]
  void* out = nullptr;           // [tokens, dim], overwritten (rows of bad ids are left as they were)
  uint32_t* bad_pos = nullptr;   // [1] scratch, set by the launcher (see above)
  int64_t tokens = 0, vocab = 0, dim = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct EmbeddingBackwardParams {
  const void* grad_out = nullptr;    // [tokens, dim]
  const int32_t* ids = nullptr;      // [tokens]
  float* grad_weight = nullptr;      // [vocab, dim], accumulated (+=)
  uint32_t* bad_pos = nullptr;       // [1] scratch, set by the launcher (see above)
  void* workspace = nullptr;         // embedding_backward_workspace_bytes(tokens) bytes of device memory
  size_t workspace_bytes = 0;
  int64_t tokens = 0, vocab = 0, dim = 0;  // tokens < 2^31
  bool bf16 = false;                 // grad_out's storage type
  Stream stream = nullptr;
};

// Device workspace that embedding_backward needs for `tokens` tokens (a stable sort of the ids).
size_t embedding_backward_workspace_bytes(int64_t tokens);

void embedding_forward(const EmbeddingForwardParams& p);
void embedding_backward(const EmbeddingBackwardParams& p);

}  // namespace moelab::cuda
