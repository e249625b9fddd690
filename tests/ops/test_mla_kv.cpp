// mla_kv: layout against direct indexing, and the gradient check (the shared rope key's gradient
// sums over heads).
#include <gtest/gtest.h>

#include "core/ops/mla_kv.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::randn;

TEST(MlaKv, LayoutByHand) {
  const int64_t N = 2, H = 3, Dn = 2, Dr = 3, Dv = 1;
  Tensor kv = randn({N, H, Dn + Dv}, DType::F64, 1), kr = randn({N, Dr}, DType::F64, 2);
  Tensor k = Tensor::empty({N, H, Dn + Dr}, DType::F64), v = Tensor::empty({N, H, Dv}, DType::F64);
  mla_kv_forward(Exec{}, kv, kr, H, Dn, k, v);
  auto at = [](const Tensor& t, int64_t i) { return t.data<double>()[i]; };
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h) {
      EXPECT_EQ(at(k, (n * H + h) * 5 + 1), at(kv, (n * H + h) * 3 + 1));  // k_nope
      EXPECT_EQ(at(k, (n * H + h) * 5 + 2 + 2), at(kr, n * 3 + 2));        // shared rope key
      EXPECT_EQ(at(v, n * H + h), at(kv, (n * H + h) * 3 + 2));            // v after k_nope
    }
}

TEST(MlaKv, GradCheck) {
  const int64_t N = 3, H = 2, Dn = 3, Dr = 2, Dv = 5;
  Tensor kv = randn({1, N, H * (Dn + Dv)}, DType::F64, 3), kr = randn({1, N, 1, Dr}, DType::F64, 4);
  Tensor k = Tensor::empty({N, H, Dn + Dr}, DType::F64), v = Tensor::empty({N, H, Dv}, DType::F64);
  Tensor gk = randn(k.shape(), DType::F64, 5), gv = randn(v.shape(), DType::F64, 6);
  auto loss = [&] {
    mla_kv_forward(Exec{}, kv, kr, H, Dn, k, v);
    return testing::dot(k, gk) + testing::dot(v, gv);
  };
  Tensor gkv = randn(kv.shape(), DType::F64, 7), gkr = randn(kr.shape(), DType::F64, 8);  // garbage: overwritten
  mla_kv_backward(Exec{}, gk, gv, H, Dn, gkv, gkr);
  EXPECT_TRUE(testing::check_grad(kv, gkv, loss));
  EXPECT_TRUE(testing::check_grad(kr, gkr, loss));
}

TEST(MlaKv, ShapeErrors) {
  Tensor kv = Tensor::zeros({4, 2, 5}, DType::F32), kr = Tensor::zeros({4, 2}, DType::F32);
  Tensor k = Tensor::zeros({4, 2, 4}, DType::F32), v = Tensor::zeros({4, 2, 3}, DType::F32);
  EXPECT_NO_THROW(mla_kv_forward(Exec{}, kv, kr, 2, 2, k, v));
  EXPECT_THROW(mla_kv_forward(Exec{}, kv, kr, 2, 3, k, v), Error);
  EXPECT_THROW(mla_kv_forward(Exec{}, kv, kr, 2, 2, Tensor::zeros({4, 2, 5}, DType::F32), v), Error);
}

}  // namespace
}  // namespace moelab
