// Launchers for MLA's key/value layout shuffle (core/ops/mla_kv.h has the math and the contract).
// Every tensor of one call is f32 or every tensor is bf16 as `bf16` says; the one sum (grad_kr
// over the heads) runs in f32, over the heads in order: deterministic.
#pragma once

#include <cstdint>

#include "cuda/stream.h"

namespace moelab::cuda {

struct MlaKvForwardParams {
  const void* kv = nullptr;  // [N, H, Dn + Dv]
  const void* kr = nullptr;  // [N, Dr]
  void* k = nullptr;         // [N, H, Dn + Dr], overwritten
  void* v = nullptr;         // [N, H, Dv], overwritten
  int64_t N = 0, H = 0, Dn = 0, Dr = 0, Dv = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

struct MlaKvBackwardParams {
  const void* grad_k = nullptr;  // [N, H, Dn + Dr]
  const void* grad_v = nullptr;  // [N, H, Dv]
  void* grad_kv = nullptr;       // [N, H, Dn + Dv], overwritten
  void* grad_kr = nullptr;       // [N, Dr], overwritten: sum over the heads of grad_k[:, h, Dn:]
  int64_t N = 0, H = 0, Dn = 0, Dr = 0, Dv = 0;
  bool bf16 = false;
  Stream stream = nullptr;
};

void mla_kv_forward(const MlaKvForwardParams& p);
void mla_kv_backward(const MlaKvBackwardParams& p);

}  // namespace moelab::cuda
