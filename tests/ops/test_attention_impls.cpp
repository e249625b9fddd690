// The two CPU attention implementations agree: the naive reference loops (the specification) and
// the GEMM-blocked default, on shapes that cross the 64-row block boundary, with GQA and T = 1.
// The naive one also gets its own finite-difference check (the Attention.GradCheck* tests run the
// default).
#include <gtest/gtest.h>

#include "core/ops/attention.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::randn;

struct Dims { int64_t B, T, H, Hkv, Dqk, Dv; };

class AttentionImpls : public ::testing::TestWithParam<Dims> {};

TEST_P(AttentionImpls, NaiveAndGemmAgree) {
  const Dims d = GetParam();
  Tensor q = randn({d.B, d.T, d.H, d.Dqk}, DType::F64, 1), k = randn({d.B, d.T, d.Hkv, d.Dqk}, DType::F64, 2);
  Tensor v = randn({d.B, d.T, d.Hkv, d.Dv}, DType::F64, 3), go = randn({d.B, d.T, d.H, d.Dv}, DType::F64, 4);
  const float scale = 0.3f;
  Tensor out[2], lse[2], gq[2], gk[2], gv[2];
  const AttentionImpl impls[2] = {AttentionImpl::Naive, AttentionImpl::Gemm};
  for (int i = 0; i < 2; ++i) {
    out[i] = Tensor::empty(go.shape(), DType::F64);
    lse[i] = Tensor::empty({d.B, d.H, d.T}, DType::F64);
    gq[i] = randn(q.shape(), DType::F64, 10 + i);  // garbage: overwritten
    gk[i] = randn(k.shape(), DType::F64, 20 + i);
    gv[i] = randn(v.shape(), DType::F64, 30 + i);
    attention_forward(Exec{}, q, k, v, scale, out[i], lse[i], impls[i]);
    attention_backward(Exec{}, go, q, k, v, out[i], lse[i], scale, gq[i], gk[i], gv[i], impls[i]);
  }
  EXPECT_TRUE(testing::close(out[1], out[0], 1e-12, 1e-10)) << "out";
  EXPECT_TRUE(testing::close(lse[1], lse[0], 1e-12, 1e-10)) << "lse";
  EXPECT_TRUE(testing::close(gq[1], gq[0], 1e-12, 1e-10)) << "grad_q";
  EXPECT_TRUE(testing::close(gk[1], gk[0], 1e-12, 1e-10)) << "grad_k";
  EXPECT_TRUE(testing::close(gv[1], gv[0], 1e-12, 1e-10)) << "grad_v";
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionImpls,
                         ::testing::Values(Dims{2, 1, 3, 3, 5, 4}, Dims{1, 150, 4, 2, 7, 3}, Dims{2, 64, 2, 1, 6, 6},
                                           Dims{1, 129, 3, 3, 24, 16}),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

TEST(AttentionImpls, NaiveGradCheck) {
  Tensor q = randn({1, 5, 4, 3}, DType::F64, 5), k = randn({1, 5, 2, 3}, DType::F64, 6), v = randn({1, 5, 2, 2}, DType::F64, 7);
  Tensor go = randn({1, 5, 4, 2}, DType::F64, 8), out = Tensor::empty({1, 5, 4, 2}, DType::F64);
  Tensor lse = Tensor::empty({1, 4, 5}, DType::F64);
  auto loss = [&] {
    attention_forward(Exec{}, q, k, v, 0.7f, out, lse, AttentionImpl::Naive);
    return testing::dot(out, go);
  };
  loss();
  Tensor gq = Tensor::empty(q.shape(), DType::F64), gk = Tensor::empty(k.shape(), DType::F64);
  Tensor gv = Tensor::empty(v.shape(), DType::F64);
  attention_backward(Exec{}, go, q, k, v, out, lse, 0.7f, gq, gk, gv, AttentionImpl::Naive);
  EXPECT_TRUE(testing::check_grad(q, gq, loss));
  EXPECT_TRUE(testing::check_grad(k, gk, loss));
  EXPECT_TRUE(testing::check_grad(v, gv, loss));
}

}  // namespace
}  // namespace moelab
