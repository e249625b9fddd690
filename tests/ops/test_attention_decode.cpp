// The attentions of generation over a KV cache against the training attention: the new rows of
// attention_decode_forward (MHA/GQA) and of mla_decode_attention (MLA, absorbed) equal the same rows
// of attention_forward over the whole sequence (for MLA, with the per-head keys and values expanded
// from the latent by W_kvb, as training does). Cache rows past the new tokens hold garbage that must
// not be read.
#include <gtest/gtest.h>

#include <cmath>

#include "core/ops/attention.h"
#include "core/ops/attention_decode.h"
#include "core/ops/matmul.h"
#include "core/ops/mla_decode.h"
#include "core/ops/mla_kv.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::randn;

// dst[b, dst_begin + i] = src[b, src_begin + i] for i < n, tensors [B, T, ...] (any T per tensor).
void copy_positions(const Tensor& src, int64_t src_begin, const Tensor& dst, int64_t dst_begin, int64_t n) {
  const int64_t B = src.size(0), w = src.numel() / (B * src.size(1));
  for (int64_t b = 0; b < B; ++b)
    dst.slice(b, b + 1).reshape({dst.size(1), w}).slice(dst_begin, dst_begin + n)
        .copy_from(src.slice(b, b + 1).reshape({src.size(1), w}).slice(src_begin, src_begin + n));
}

// A cache of capacity S holding x's T positions, the rest garbage.
Tensor as_cache(const Tensor& x, int64_t S, uint64_t seed) {
  std::vector<int64_t> dims = x.shape().dims();
  dims[1] = S;
  Tensor cache = randn(Shape(dims), x.dtype(), seed, 100.0);
  copy_positions(x, 0, cache, 0, x.size(1));
  return cache;
}

// Rows [pos, pos + n) of x [B, T, ...] as a new [B, n, ...] tensor.
Tensor positions(const Tensor& x, int64_t pos, int64_t n) {
  std::vector<int64_t> dims = x.shape().dims();
  dims[1] = n;
  Tensor out = Tensor::empty(Shape(dims), x.dtype());
  copy_positions(x, pos, out, 0, n);
  return out;
}

TEST(AttentionDecode, RowsOfAttentionForward) {
  const int64_t B = 2, T = 6, S = 9, H = 4, Hkv = 2, Dqk = 5, Dv = 3;
  for (DType dt : {DType::F64, DType::F32}) {
    Tensor q = randn({B, T, H, Dqk}, dt, 1), k = randn({B, T, Hkv, Dqk}, dt, 2), v = randn({B, T, Hkv, Dv}, dt, 3);
    Tensor full = Tensor::empty({B, T, H, Dv}, dt), lse = Tensor::empty({B, H, T}, dt);
    const float scale = 0.45f;
    attention_forward(Exec{}, q, k, v, scale, full, lse);
    const Tensor kc = as_cache(k, S, 4), vc = as_cache(v, S, 5);
    const double tol = dt == DType::F64 ? 1e-13 : 1e-6;
    for (auto [pos, n] : {std::pair<int64_t, int64_t>{0, T}, {4, 2}, {5, 1}, {0, 1}}) {
      Tensor out = randn({B, n, H, Dv}, dt, 6);  // garbage: overwritten
      attention_decode_forward(Exec{}, positions(q, pos, n), kc, vc, scale, pos, out);
      EXPECT_TRUE(testing::close(out, positions(full, pos, n), tol, tol)) << "pos " << pos << " n " << n;
    }
  }
}

TEST(MlaDecode, AbsorbedEqualsExpandedAttention) {
  const int64_t B = 2, T = 5, S = 7, H = 3, Dn = 2, Dr = 4, Dv = 3, Ckv = 6;
  for (DType dt : {DType::F64, DType::F32}) {
    Tensor q = randn({B, T, H, Dn + Dr}, dt, 11), w_kvb = randn({H * (Dn + Dv), Ckv}, dt, 12, 0.5);
    Tensor ckv = randn({B, T, Ckv}, dt, 13), kr = randn({B, T, Dr}, dt, 14);
    // Training's form: kv = W_kvb ckv, per-head keys [k_nope ; kr] and values, attention_forward.
    Tensor kv = Tensor::empty({B * T, H * (Dn + Dv)}, dt);
    matmul_forward(Exec{}, ckv.reshape({B * T, Ckv}), w_kvb, kv);
    Tensor k = Tensor::empty({B, T, H, Dn + Dr}, dt), v = Tensor::empty({B, T, H, Dv}, dt);
    mla_kv_forward(Exec{}, kv, kr, H, Dn, k, v);
    Tensor full = Tensor::empty({B, T, H, Dv}, dt), lse = Tensor::empty({B, H, T}, dt);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(Dn + Dr)));
    attention_forward(Exec{}, q, k, v, scale, full, lse);
    // The absorbed form over the latent cache.
    const Tensor ckv_cache = as_cache(ckv, S, 15), kr_cache = as_cache(kr, S, 16);
    const double tol = dt == DType::F64 ? 1e-13 : 2e-6;
    for (auto [pos, n] : {std::pair<int64_t, int64_t>{0, T}, {3, 2}, {4, 1}, {0, 1}}) {
      Tensor out = randn({B, n, H, Dv}, dt, 17);  // garbage: overwritten
      mla_decode_attention(Exec{}, positions(q, pos, n), w_kvb, ckv_cache, kr_cache, scale, pos, out);
      EXPECT_TRUE(testing::close(out, positions(full, pos, n), tol, tol)) << "pos " << pos << " n " << n;
    }
  }
}

TEST(AttentionDecode, ShapeErrors) {
  Tensor q = Tensor::zeros({1, 2, 2, 4}, DType::F32), k = Tensor::zeros({1, 5, 1, 4}, DType::F32);
  Tensor v = Tensor::zeros({1, 5, 1, 3}, DType::F32), out = Tensor::zeros({1, 2, 2, 3}, DType::F32);
  EXPECT_NO_THROW(attention_decode_forward(Exec{}, q, k, v, 0.5f, 3, out));
  testing::expect_error([&] { attention_decode_forward(Exec{}, q, k, v, 0.5f, 4, out); },
                        "do not fit the cache's 5 positions");
  Tensor w = Tensor::zeros({2 * (2 + 3), 6}, DType::F32), ckv = Tensor::zeros({1, 5, 6}, DType::F32);
  Tensor kr = Tensor::zeros({1, 5, 2}, DType::F32);
  EXPECT_NO_THROW(mla_decode_attention(Exec{}, q, w, ckv, kr, 0.5f, 3, out));
  testing::expect_error([&] { mla_decode_attention(Exec{}, q, w, ckv, kr, 0.5f, 4, out); },
                        "do not fit the cache's 5 positions");
  testing::expect_error(
      [&] {
        mla_decode_attention(Exec{}, q, Tensor::zeros({9, 6}, DType::F32), ckv, kr, 0.5f, 0, out);
      },
      "w_kvb");
}

}  // namespace
}  // namespace moelab
