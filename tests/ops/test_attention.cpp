// Causal attention: finite-difference gradient checks in double (one token, one head, Dqk != Dv,
// GQA, MQA, odd dims), a naive direct computation of out and lse, causality, exact known values,
// f32 vs f64, thread-count determinism of the backward, and argument errors.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/ops/attention.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::check_grad;
using testing::randn;

struct Dims { int64_t B, T, H, Hkv, Dqk, Dv; };

struct Inputs {
  Tensor q, k, v;  // [B,T,H,Dqk], [B,T,Hkv,Dqk], [B,T,Hkv,Dv]
};

Inputs make_inputs(const Dims& d, DType dtype, uint64_t seed) {
  return {randn({d.B, d.T, d.H, d.Dqk}, dtype, seed), randn({d.B, d.T, d.Hkv, d.Dqk}, dtype, seed + 1),
          randn({d.B, d.T, d.Hkv, d.Dv}, dtype, seed + 2)};
}

float scale_of(const Dims& d) { return 1.0f / std::sqrt(static_cast<float>(d.Dqk)); }

// L = <out, G>; the three gradients come from attention_backward, written over garbage.
void expect_attention_grad(const Dims& d) {
  Inputs in = make_inputs(d, DType::F64, 1);
  Tensor G = randn({d.B, d.T, d.H, d.Dv}, DType::F64, 4);
  Tensor out = Tensor::empty({d.B, d.T, d.H, d.Dv}, DType::F64), lse = Tensor::empty({d.B, d.H, d.T}, DType::F64);
  const float scale = scale_of(d);
  auto loss = [&] {
    attention_forward(Exec{}, in.q, in.k, in.v, scale, out, lse);
    return testing::dot(out, G);
  };
  loss();
  // Garbage: backward must overwrite all three.
  Tensor gq = randn(in.q.shape(), DType::F64, 5), gk = randn(in.k.shape(), DType::F64, 6);
  Tensor gv = randn(in.v.shape(), DType::F64, 7);
  attention_backward(Exec{}, G, in.q, in.k, in.v, out, lse, scale, gq, gk, gv);
  EXPECT_TRUE(check_grad(in.q, gq, loss)) << "grad_q";
  EXPECT_TRUE(check_grad(in.k, gk, loss)) << "grad_k";
  EXPECT_TRUE(check_grad(in.v, gv, loss)) << "grad_v";
}

TEST(Attention, GradCheckOneTokenOneHead) { expect_attention_grad({1, 1, 1, 1, 3, 2}); }
TEST(Attention, GradCheckGqaDqkNotDv) { expect_attention_grad({2, 5, 4, 2, 5, 3}); }
TEST(Attention, GradCheckMqa) { expect_attention_grad({1, 6, 3, 1, 4, 5}); }
TEST(Attention, GradCheckMhaOddDims) { expect_attention_grad({2, 9, 2, 2, 7, 11}); }

// The definition, written out with no max subtraction and no shared code: out and lse in double.
void naive_attention(const Inputs& in, const Dims& d, double scale, std::vector<double>& out, std::vector<double>& lse) {
  const double* q = in.q.data<double>();
  const double* k = in.k.data<double>();
  const double* v = in.v.data<double>();
  out.assign(d.B * d.T * d.H * d.Dv, 0.0);
  lse.assign(d.B * d.H * d.T, 0.0);
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h) {
      const int64_t g = h / (d.H / d.Hkv);
      for (int64_t t = 0; t < d.T; ++t) {
        std::vector<double> e(t + 1);
        double z = 0;
        for (int64_t j = 0; j <= t; ++j) {
          double s = 0;
          for (int64_t c = 0; c < d.Dqk; ++c)
            s += q[((b * d.T + t) * d.H + h) * d.Dqk + c] * k[((b * d.T + j) * d.Hkv + g) * d.Dqk + c];
          e[j] = std::exp(scale * s);
          z += e[j];
        }
        lse[(b * d.H + h) * d.T + t] = std::log(z);
        for (int64_t j = 0; j <= t; ++j)
          for (int64_t c = 0; c < d.Dv; ++c)
            out[((b * d.T + t) * d.H + h) * d.Dv + c] += e[j] / z * v[((b * d.T + j) * d.Hkv + g) * d.Dv + c];
      }
    }
}

Tensor from_vector(const std::vector<double>& values, const Shape& shape) {
  Tensor t = Tensor::empty(shape, DType::F64);
  std::copy(values.begin(), values.end(), t.data<double>());
  return t;
}

TEST(Attention, MatchesNaiveComputation) {
  const Dims d{2, 7, 4, 2, 5, 3};
  Inputs in = make_inputs(d, DType::F64, 11);
  Tensor out = Tensor::empty({d.B, d.T, d.H, d.Dv}, DType::F64), lse = Tensor::empty({d.B, d.H, d.T}, DType::F64);
  attention_forward(Exec{}, in.q, in.k, in.v, scale_of(d), out, lse);
  std::vector<double> out_ref, lse_ref;
  naive_attention(in, d, scale_of(d), out_ref, lse_ref);
  EXPECT_TRUE(testing::close(out, from_vector(out_ref, out.shape()), 1e-13, 1e-12)) << "out";
  EXPECT_TRUE(testing::close(lse, from_vector(lse_ref, lse.shape()), 1e-13, 1e-12)) << "lse";
}

TEST(Attention, FutureKeysAndValuesDoNotChangeEarlierOutputs) {
  const Dims d{2, 6, 4, 2, 5, 3};
  const int64_t t0 = 3;  // perturb keys and values at this position
  Inputs in = make_inputs(d, DType::F64, 21);
  Tensor out1 = Tensor::empty({d.B, d.T, d.H, d.Dv}, DType::F64), lse1 = Tensor::empty({d.B, d.H, d.T}, DType::F64);
  attention_forward(Exec{}, in.q, in.k, in.v, scale_of(d), out1, lse1);
  for (int64_t b = 0; b < d.B; ++b) {
    for (int64_t i = 0; i < d.Hkv * d.Dqk; ++i) in.k.data<double>()[(b * d.T + t0) * d.Hkv * d.Dqk + i] += 0.5;
    for (int64_t i = 0; i < d.Hkv * d.Dv; ++i) in.v.data<double>()[(b * d.T + t0) * d.Hkv * d.Dv + i] -= 0.5;
  }
  Tensor out2 = Tensor::empty(out1.shape(), DType::F64), lse2 = Tensor::empty(lse1.shape(), DType::F64);
  attention_forward(Exec{}, in.q, in.k, in.v, scale_of(d), out2, lse2);
  // Earlier positions: bit-identical lse and out. Positions >= t0 see the change.
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t h = 0; h < d.H; ++h)
      for (int64_t t = 0; t < d.T; ++t) {
        const int64_t l = (b * d.H + h) * d.T + t, o = ((b * d.T + t) * d.H + h) * d.Dv;
        if (t < t0) {
          EXPECT_EQ(lse1.data<double>()[l], lse2.data<double>()[l]) << "b " << b << " h " << h << " t " << t;
          for (int64_t c = 0; c < d.Dv; ++c)
            EXPECT_EQ(out1.data<double>()[o + c], out2.data<double>()[o + c]) << "b " << b << " h " << h << " t " << t;
        } else {
          EXPECT_NE(lse1.data<double>()[l], lse2.data<double>()[l]) << "position " << t << " sees key " << t0;
          EXPECT_NE(out1.data<double>()[o], out2.data<double>()[o]) << "position " << t << " sees value " << t0;
        }
      }
}

TEST(Attention, KnownValues) {
  // One token: p = 1, so out = v exactly and lse = the one score. Two tokens with the same key:
  // p = (1/2, 1/2), so out = the mean of the two values and lse = score + log 2.
  const Dims d{1, 2, 2, 1, 3, 2};
  Inputs in = make_inputs(d, DType::F64, 31);
  for (int64_t c = 0; c < d.Dqk; ++c) in.k.data<double>()[d.Dqk + c] = in.k.data<double>()[c];
  Tensor out = Tensor::empty({d.B, d.T, d.H, d.Dv}, DType::F64), lse = Tensor::empty({d.B, d.H, d.T}, DType::F64);
  const float scale = 0.75f;
  attention_forward(Exec{}, in.q, in.k, in.v, scale, out, lse);
  const double* q = in.q.data<double>();
  const double* k = in.k.data<double>();
  const double* v = in.v.data<double>();
  for (int64_t h = 0; h < d.H; ++h) {
    double s0 = 0, s1 = 0;  // head h's scores of token 0 and token 1 against key 0
    for (int64_t c = 0; c < d.Dqk; ++c) {
      s0 += q[h * d.Dqk + c] * k[c];
      s1 += q[(d.H + h) * d.Dqk + c] * k[c];
    }
    EXPECT_DOUBLE_EQ(lse.data<double>()[h * d.T + 0], scale * s0);
    EXPECT_NEAR(lse.data<double>()[h * d.T + 1], scale * s1 + std::log(2.0), 1e-15);
    for (int64_t c = 0; c < d.Dv; ++c) {
      EXPECT_EQ(out.data<double>()[h * d.Dv + c], v[c]);
      EXPECT_NEAR(out.data<double>()[(d.H + h) * d.Dv + c], 0.5 * (v[c] + v[d.Dv + c]), 1e-15);
    }
  }
}

TEST(Attention, FloatMatchesDouble) {
  const Dims d{2, 8, 4, 2, 6, 4};
  Inputs in64 = make_inputs(d, DType::F64, 41);
  Inputs in32{in64.q.to(DType::F32), in64.k.to(DType::F32), in64.v.to(DType::F32)};
  Tensor o64 = Tensor::empty({d.B, d.T, d.H, d.Dv}, DType::F64), l64 = Tensor::empty({d.B, d.H, d.T}, DType::F64);
  Tensor o32 = Tensor::empty({d.B, d.T, d.H, d.Dv}, DType::F32), l32 = Tensor::empty({d.B, d.H, d.T}, DType::F32);
  attention_forward(Exec{}, in64.q, in64.k, in64.v, scale_of(d), o64, l64);
  attention_forward(Exec{}, in32.q, in32.k, in32.v, scale_of(d), o32, l32);
  EXPECT_TRUE(testing::close(o32, o64, 1e-5, 1e-5));
  EXPECT_TRUE(testing::close(l32, l64, 1e-5, 1e-5));
}

TEST(Attention, BackwardIsDeterministicAcrossThreadCounts) {
  const Dims d{2, 11, 4, 2, 5, 3};
  Inputs in = make_inputs(d, DType::F32, 51);
  Tensor G = randn({d.B, d.T, d.H, d.Dv}, DType::F32, 54);
  Tensor out = Tensor::empty(G.shape(), DType::F32), lse = Tensor::empty({d.B, d.H, d.T}, DType::F32);
  attention_forward(Exec{}, in.q, in.k, in.v, scale_of(d), out, lse);
  auto grads = [&](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    std::vector<Tensor> g{Tensor::empty(in.q.shape(), DType::F32), Tensor::empty(in.k.shape(), DType::F32),
                          Tensor::empty(in.v.shape(), DType::F32)};
    attention_backward(Exec{}, G, in.q, in.k, in.v, out, lse, scale_of(d), g[0], g[1], g[2]);
    omp_set_num_threads(saved);
    return g;
  };
  const std::vector<Tensor> one = grads(1), many = grads(3);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(testing::close(many[i], one[i], 0, 0)) << "gradient " << i;
}

using testing::expect_error;

TEST(Attention, ArgumentErrorsNameTheValue) {
  auto z = [](const Shape& s, DType t = DType::F32) { return Tensor::zeros(s, t); };
  Tensor q = z({1, 4, 3, 5}), k = z({1, 4, 2, 5}), v = z({1, 4, 2, 3}), out = z({1, 4, 3, 3}), lse = z({1, 3, 4});
  expect_error([&] { attention_forward(Exec{}, q, k, v, 0.5f, out, lse); },
               "q has H = 3 heads and k has Hkv = 2 heads");
  Tensor q4 = z({1, 4, 4, 5}), out4 = z({1, 4, 4, 3}), lse4 = z({1, 4, 4});
  expect_error(
      [&] {
        attention_forward(Exec{}, q4, z({1, 4, 2, 6}), v, 0.5f, out4, lse4);
      },
      "k is f32[1,4,2,6]@cpu, expected shape [1,4,2,5]");
  expect_error(
      [&] {
        attention_forward(Exec{}, q4, k, z({1, 3, 2, 3}), 0.5f, out4, lse4);
      },
      "v is f32[1,3,2,3]@cpu, expected shape [1,4,2,3]");
  expect_error(
      [&] {
        attention_forward(Exec{}, q4, k, v, 0.5f, out4, z({1, 4, 3}));
      },
      "lse is f32[1,4,3]@cpu, expected shape [1,4,4]");
  expect_error([&] { attention_forward(Exec{}, q4, k, v, 0.0f, out4, lse4); }, "scale is 0");
  expect_error([&] { attention_forward(Exec{}, q4, k.to(DType::F64), v, 0.5f, out4, lse4); }, "expected dtype f32");
  expect_error(
      [&] {
        attention_backward(Exec{}, out4, q4, k, v, out4, lse4, 0.5f, z({1, 4, 4, 5}), z({1, 4, 2, 5}), z({1, 4, 2, 4}));
      },
      "grad_v is f32[1,4,2,4]@cpu, expected shape [1,4,2,3]");
}

}  // namespace
}  // namespace moelab
