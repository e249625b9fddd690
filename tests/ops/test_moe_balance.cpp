// MoE balance losses (core/ops/moe_balance.h) on the CPU, called directly: the sequence-wise and
// batch-level aux loss and the router z-loss against plain loops written from MODEL.md's
// formulas, finite-difference gradient checks in double of their backwards (which ACCUMULATE:
// the gradients start as random values and the check is on the added part), f32 against f64, and
// argument errors. The layer's use of them is checked in tests/nn/test_moe.cpp; the GPU kernels
// against this reference in tests/gpu/test_moe_ops_cuda.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/ops/moe_balance.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::check_grad;
using testing::randn;

// A selection [N, K]: K distinct experts per row (the order of a random row), as a router makes.
// The forwards write their loss into an f64 [1] tensor; these read it back.
double aux_loss(const Tensor& scores, const Tensor& idx, int64_t seq_len, double alpha,
                const std::vector<double>& fractions = {}) {
  const Tensor out = Tensor::empty({1}, DType::F64);
  moe_aux_loss_forward(Exec{}, scores, idx, seq_len, alpha, out, fractions);
  return out.data<double>()[0];
}
double z_loss(const Tensor& logits, double coef) {
  const Tensor out = Tensor::empty({1}, DType::F64);
  moe_z_loss_forward(Exec{}, logits, coef, out);
  return out.data<double>()[0];
}

Tensor random_selection(int64_t N, int64_t E, int64_t K, uint64_t seed) {
  const Tensor r = randn({N, E}, DType::F64, seed);
  Tensor idx = Tensor::empty({N, K}, DType::I32);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<int32_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    const double* v = r.data<double>() + n * E;
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return v[a] > v[b]; });
    std::copy_n(order.begin(), K, idx.data<int32_t>() + n * K);
  }
  return idx;
}

// Positive scores (sigmoid-like, so Z_t != 1 and the normalisation of P matters), f64 [N, E].
Tensor random_scores(int64_t N, int64_t E, uint64_t seed) {
  return testing::rand_uniform({N, E}, DType::F64, seed, 0.05f, 1.0f);
}

// MODEL.md: L = alpha * (1/B) sum_b sum_i f_{b,i} P_{b,i}, sequences of `len` rows.
double aux_loss_loops(const Tensor& scores, const Tensor& idx, int64_t len, double alpha) {
  const int64_t N = scores.size(0), E = scores.size(1), K = idx.size(1);
  const double* s = scores.data<double>();
  const int32_t* sel = idx.data<int32_t>();
  double total = 0;
  for (int64_t b0 = 0; b0 < N; b0 += len)
    for (int64_t i = 0; i < E; ++i) {
      double count = 0, p = 0;
      for (int64_t t = b0; t < b0 + len; ++t) {
        for (int64_t k = 0; k < K; ++k) count += sel[t * K + k] == i;
        double z = 0;
        for (int64_t j = 0; j < E; ++j) z += s[t * E + j];
        p += s[t * E + i] / z / static_cast<double>(len);
      }
      total += static_cast<double>(E) / static_cast<double>(K * len) * count * p;
    }
  return alpha * total / static_cast<double>(N / len);
}

// MODEL.md: L = coef * mean_t (log sum_j e^logits[t, j])^2.
double z_loss_loops(const Tensor& logits, double coef) {
  const int64_t N = logits.size(0), E = logits.size(1);
  double total = 0;
  for (int64_t t = 0; t < N; ++t) {
    double sum = 0;
    for (int64_t j = 0; j < E; ++j) sum += std::exp(logits.data<double>()[t * E + j]);
    total += std::log(sum) * std::log(sum);
  }
  return coef * total / static_cast<double>(N);
}

TEST(MoeBalance, AuxLossMatchesLoops) {
  const int64_t B = 3, T = 5, N = B * T, E = 7, K = 3;
  const Tensor scores = random_scores(N, E, 1), idx = random_selection(N, E, K, 2);
  const double seq = aux_loss(scores, idx, T, 0.3);
  const double batch = aux_loss(scores, idx, N, 0.2);
  EXPECT_NEAR(seq, aux_loss_loops(scores, idx, T, 0.3), 1e-15);
  EXPECT_NEAR(batch, aux_loss_loops(scores, idx, N, 0.2), 1e-15);
  EXPECT_NE(seq, batch * 0.3 / 0.2);  // per-sequence f differs from the batch's
}

TEST(MoeBalance, ZLossMatchesLoops) {
  const Tensor logits = randn({9, 5}, DType::F64, 3, 2.0);
  EXPECT_NEAR(z_loss(logits, 0.05), z_loss_loops(logits, 0.05), 1e-14);
  // Large logits: the row max is subtracted before exp, so nothing overflows.
  const Tensor big = randn({4, 6}, DType::F64, 4, 1.0, 800.0);
  const double z = z_loss(big, 1.0);
  EXPECT_TRUE(std::isfinite(z));
  EXPECT_GT(z, 790.0 * 790.0);
}

// L = c * aux(scores) with the selection fixed (no gradient flows through f): backward with
// grad_loss = c adds dL/dscores to a random grad_scores.
void expect_aux_grad(int64_t B, int64_t T, int64_t E, int64_t K, int64_t seq_len, uint64_t seed) {
  const int64_t N = B * T;
  const double alpha = 0.4, c = 1.7;
  Tensor scores = random_scores(N, E, seed);
  const Tensor idx = random_selection(N, E, K, seed + 1);
  const Tensor start = randn({N, E}, DType::F64, seed + 2);
  const Tensor grad = start.to(DType::F64);  // a copy: backward accumulates into it
  moe_aux_loss_backward(Exec{}, scores, idx, seq_len, alpha, c, grad);
  Tensor added = Tensor::empty({N, E}, DType::F64);
  for (int64_t i = 0; i < added.numel(); ++i)
    added.data<double>()[i] = grad.data<double>()[i] - start.data<double>()[i];
  EXPECT_TRUE(check_grad(scores, added, [&] { return c * aux_loss(scores, idx, seq_len, alpha); }));
}

TEST(MoeBalance, AuxGradCheckSequenceWise) { expect_aux_grad(3, 4, 6, 2, 4, 10); }
TEST(MoeBalance, AuxGradCheckBatchLevel) { expect_aux_grad(2, 5, 5, 3, 10, 20); }
TEST(MoeBalance, AuxGradCheckOneRowOneExpertChosen) { expect_aux_grad(1, 1, 3, 1, 1, 30); }

// Data parallel: a batch split over processes, each passing the WHOLE batch's fractions f, gives
// the whole batch's loss as the mean of the parts and its gradient rows as the parts' gradients
// with the mean's 1/parts (what the data-parallel average applies).
TEST(MoeBalance, AuxLossWithBatchFractionsSplitsTheBatch) {
  const int64_t N = 12, E = 5, K = 2, parts = 3, n = N / parts;
  const double alpha = 0.3;
  const Tensor scores = random_scores(N, E, 40), idx = random_selection(N, E, K, 41);
  std::vector<double> f(E, 0.0);
  for (int64_t i = 0; i < N * K; ++i) f[static_cast<size_t>(idx.data<int32_t>()[i])] += 1.0;
  for (double& v : f) v *= static_cast<double>(E) / static_cast<double>(K * N);
  const double whole = aux_loss(scores, idx, N, alpha);
  Tensor grad_whole = Tensor::zeros({N, E}, DType::F64);
  moe_aux_loss_backward(Exec{}, scores, idx, N, alpha, 1.0, grad_whole);
  double mean = 0;
  Tensor grad_parts = Tensor::zeros({N, E}, DType::F64);
  for (int64_t p = 0; p < parts; ++p) {
    const Tensor s = scores.slice(p * n, (p + 1) * n), k = idx.slice(p * n, (p + 1) * n);
    mean += aux_loss(s, k, n, alpha, f) / parts;
    moe_aux_loss_backward(Exec{}, s, k, n, alpha, 1.0 / parts, grad_parts.slice(p * n, (p + 1) * n), f);
    // A part's own selections alone give another loss: the fractions matter.
    EXPECT_NE(aux_loss(s, k, n, alpha), aux_loss(s, k, n, alpha, f));
  }
  EXPECT_NEAR(mean, whole, 1e-15);
  EXPECT_TRUE(testing::close(grad_parts, grad_whole, 1e-15, 1e-12));
  // The gradient with given fractions, by finite differences.
  Tensor part = scores.slice(0, n).to(DType::F64);
  const Tensor part_idx = idx.slice(0, n);
  Tensor added = Tensor::zeros({n, E}, DType::F64);
  moe_aux_loss_backward(Exec{}, part, part_idx, n, alpha, 1.0, added, f);
  EXPECT_TRUE(check_grad(part, added, [&] { return aux_loss(part, part_idx, n, alpha, f); }));
  // Fractions only describe one whole batch: seq_len must be the rows, and there must be E of them.
  EXPECT_THROW(aux_loss(part, part_idx, 2, alpha, f), Error);
  EXPECT_THROW(aux_loss(part, part_idx, n, alpha, std::vector<double>(E + 1, 0.1)), Error);
}

TEST(MoeBalance, ZLossGradCheck) {
  const int64_t N = 7, E = 5;
  const double coef = 0.3, c = 0.8;
  Tensor logits = randn({N, E}, DType::F64, 40, 1.5);
  const Tensor start = randn({N, E}, DType::F64, 41);
  const Tensor grad = start.to(DType::F64);
  moe_z_loss_backward(Exec{}, logits, coef, c, grad);
  Tensor added = Tensor::empty({N, E}, DType::F64);
  for (int64_t i = 0; i < added.numel(); ++i)
    added.data<double>()[i] = grad.data<double>()[i] - start.data<double>()[i];
  EXPECT_TRUE(check_grad(logits, added, [&] { return c * z_loss(logits, coef); }));
}

// The f32 reference (training) against the f64 one (checks) on the same inputs.
TEST(MoeBalance, FloatMatchesDouble) {
  const int64_t N = 12, E = 8, K = 2, T = 4;
  const Tensor s64 = random_scores(N, E, 50), idx = random_selection(N, E, K, 51);
  const Tensor l64 = randn({N, E}, DType::F64, 52, 2.0);
  const Tensor s32 = s64.to(DType::F32), l32 = l64.to(DType::F32);
  EXPECT_NEAR(aux_loss(s32, idx, T, 0.1), aux_loss(s64, idx, T, 0.1), 1e-7);
  EXPECT_NEAR(z_loss(l32, 0.01), z_loss(l64, 0.01), 1e-7);
  Tensor g32 = Tensor::zeros({N, E}, DType::F32), g64 = Tensor::zeros({N, E}, DType::F64);
  moe_aux_loss_backward(Exec{}, s32, idx, T, 0.1, 1.0, g32);
  moe_aux_loss_backward(Exec{}, s64, idx, T, 0.1, 1.0, g64);
  EXPECT_TRUE(testing::close(g32, g64, 1e-7, 1e-5));
  g32.zero();
  g64.zero();
  moe_z_loss_backward(Exec{}, l32, 0.01, 1.0, g32);
  moe_z_loss_backward(Exec{}, l64, 0.01, 1.0, g64);
  EXPECT_TRUE(testing::close(g32, g64, 1e-7, 1e-5));
}

using testing::expect_error;

TEST(MoeBalance, RejectsBadArguments) {
  const Tensor scores = random_scores(6, 4, 60), idx = random_selection(6, 4, 2, 61);
  expect_error([&] { aux_loss(scores, idx, 4, 0.1); },
               "seq_len = 4 must be >= 1 and divide the 6 rows of scores");
  Tensor bad = idx.to(DType::I32);
  bad.data<int32_t>()[5] = 4;  // row 2, slot 1
  expect_error([&] { aux_loss(scores, bad, 3, 0.1); },
               "topk_idx[2, 1] is 4, expected an expert in [0, E = 4)");
  const Tensor wide = random_selection(6, 5, 5, 62);  // K = 5 > E = 4
  expect_error([&] { aux_loss(scores, wide, 3, 0.1); }, "expected 1 <= K <= E");
  const Tensor grad = Tensor::zeros({6, 5}, DType::F64);
  expect_error([&] { moe_aux_loss_backward(Exec{}, scores, idx, 3, 0.1, 1.0, grad); }, "grad_scores");
  expect_error([&] { z_loss(Tensor::zeros({0, 4}, DType::F64), 0.1); },
               "expected at least one row and one expert");
  // The loss goes into one f64.
  expect_error([&] { moe_z_loss_forward(Exec{}, scores, 0.1, Tensor::zeros({2}, DType::F64)); },
               "loss is f64[2]@cpu, expected shape [1]");
  expect_error([&] { moe_aux_loss_forward(Exec{}, scores, idx, 3, 0.1, Tensor::zeros({1}, DType::F32)); },
               "loss is f32[1]@cpu, expected dtype f64");
  expect_error([&] { moe_z_loss_backward(Exec{}, scores, 0.1, 1.0, Tensor::zeros({6, 4}, DType::F32)); },
               "grad_logits");
}

}  // namespace
}  // namespace moelab
