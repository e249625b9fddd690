// Cross-entropy, AdamW and the gradient norm on the GPU against the CPU references: CE over any V
// (1 .. 129280, chunked rows), ignored and all-ignored rows, f32 and bf16 logits; AdamW over several
// steps with the bf16 / f32 param_copy; grad_norm and clipping over odd-sized tensors; the step's
// statistics; bad targets and device / dtype errors; two runs of every reduction bit-identical. Guard values around every
// output catch writes outside it.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/ops/adamw.h"
#include "core/ops/cross_entropy.h"
#include "core/ops/grad_norm.h"
#include "core/ops/step_stats.h"
#include "tests/gpu/gpu_harness.h"

namespace moelab {
namespace {
using testing::Guarded;
using testing::randn;

constexpr int kIgnore = -100;

// Bit-equality of two tensors of the same dtype (any devices).
bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to(Device::CPU), hb = b.to(Device::CPU);
  return ha.dtype() == hb.dtype() && ha.nbytes() == hb.nbytes() && std::memcmp(ha.raw(), hb.raw(), ha.nbytes()) == 0;
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

struct CeCase {
  Shape logits_shape;  // [..., V]
  DType act;
  int ignore_every;    // 0: no row ignored; k > 0: rows r % k == 1 ignored; -1: every row ignored
  double mean = 0.0;   // logits ~ N(mean, 2^2): a large mean checks the max subtraction
};

Shape rows_shape_of(const Shape& s) {
  std::vector<int64_t> dims = s.dims();
  dims.pop_back();
  return Shape(dims);
}

Tensor make_targets(const Shape& shape, int32_t vocab, int ignore_every, uint64_t seed) {
  Tensor t = testing::randint(shape, vocab, seed);
  for (int64_t r = 0; r < t.numel(); ++r)
    if (ignore_every < 0 || (ignore_every > 0 && r % ignore_every == 1)) t.data<int32_t>()[r] = kIgnore;
  return t;
}

class CrossEntropyCuda : public testing::GpuTest, public ::testing::WithParamInterface<CeCase> {};

TEST_P(CrossEntropyCuda, MatchesCpuReference) {
  const CeCase c = GetParam();
  const Shape rshape = rows_shape_of(c.logits_shape);
  const int64_t vocab = c.logits_shape[-1], rows = rshape.numel();
  const bool bf16 = c.act == DType::BF16;
  Tensor logits = randn(c.logits_shape, DType::F32, 101, 2.0, c.mean);
  if (bf16) logits = testing::bf16_round(logits);  // the CPU sees exactly the GPU's values
  const Tensor targets = make_targets(rshape, static_cast<int32_t>(vocab), c.ignore_every, 102);
  int64_t n_valid = 0;
  for (int64_t r = 0; r < rows; ++r) n_valid += targets.data<int32_t>()[r] != kIgnore;
  if (c.ignore_every > 0) {
    ASSERT_LT(n_valid, rows);  // the case really has ignored rows
  } else if (c.ignore_every == 0) {
    ASSERT_EQ(n_valid, rows);
  } else {
    ASSERT_EQ(n_valid, 0);
  }

  // CPU reference.
  Tensor losses = Tensor::empty(rshape, DType::F32), lse = Tensor::empty(rshape, DType::F32);
  const Tensor stats = Tensor::empty({kCrossEntropyStats}, DType::F64);
  const double mean = cross_entropy_mean(testing::gpu_exec(), logits, targets, kIgnore, losses, lse, stats);
  const double grad_loss = 1.7 * static_cast<double>(rows);  // gradients of order 1, not 1/rows
  Tensor grad = Tensor::empty(c.logits_shape, DType::F32);
  cross_entropy_backward(testing::gpu_exec(), logits, targets, lse, stats, kIgnore, grad_loss, grad);

  // GPU (outputs start as guard garbage: they are overwritten).
  const Tensor dlogits = testing::to_gpu(logits, c.act), dtargets = targets.to(Device::CUDA);
  Guarded dlosses(rshape, DType::F32), dlse(rshape, DType::F32), dgrad(c.logits_shape, c.act);
  const Tensor dstats = Tensor::empty({kCrossEntropyStats}, DType::F64, Device::CUDA);
  const double dmean =
      cross_entropy_mean(testing::gpu_exec(), dlogits, dtargets, kIgnore, dlosses.view, dlse.view, dstats);
  const CrossEntropyStats st = read_cross_entropy_stats(dstats);
  EXPECT_EQ(st.n_valid, n_valid) << "the device's count of valid rows";
  EXPECT_EQ(st.bad_row, -1);
  // The backward from the CPU's lse: it checks the backward alone, not the forward's rounding again
  // (and reads n_valid from the device statistics).
  cross_entropy_backward(testing::gpu_exec(), dlogits, dtargets, lse.to(Device::CUDA), dstats, kIgnore, grad_loss,
                         dgrad.view);

  // losses and lse are f32 computed in f32 from the same inputs (bf16 logits included): the f32
  // policy; they reach ~11 for V = 50257, where the summation order of the sum-exp shows.
  EXPECT_TRUE(testing::close(dlosses.view, losses, 1e-5, 1e-5)) << "losses";
  EXPECT_TRUE(testing::close(dlse.view, lse, 1e-5, 1e-5)) << "lse";
  if (n_valid == 0) {
    EXPECT_EQ(dmean, 0.0) << "all rows ignored: the mean is 0, not NaN";
    EXPECT_EQ(mean, 0.0);
  } else {
    EXPECT_NEAR(dmean, mean, 1e-5 * std::fabs(mean) + 1e-7) << "mean";
    if (vocab > 1) {
      EXPECT_GT(std::fabs(mean), 1e-3) << "the mean must not be trivially small";
    } else {
      EXPECT_EQ(dmean, 0.0) << "V = 1: every loss is exactly 0";
    }
  }
  // Ignored rows: loss exactly 0 and gradient exactly 0.
  const Tensor hl = testing::to_host(dlosses.view), hg = testing::to_host(dgrad.view);
  for (int64_t r = 0; r < rows; ++r) {
    if (targets.data<int32_t>()[r] != kIgnore) continue;
    EXPECT_EQ(hl.data<float>()[r], 0.0f) << "row " << r;
    for (int64_t v = 0; v < vocab; ++v) ASSERT_EQ(hg.data<float>()[r * vocab + v], 0.0f) << "row " << r << " col " << v;
  }
  if (bf16) {
    // The policy, and the tighter truth: the f32 value (within ~1e-5 of the CPU's) rounded once to bf16.
    EXPECT_TRUE(testing::close(hg, grad, testing::act_atol(c.act), testing::act_rtol(c.act))) << "grad_logits";
    EXPECT_TRUE(testing::close(hg, grad, 1e-6, 4e-3)) << "grad_logits: one bf16 rounding";
  } else {
    EXPECT_TRUE(testing::close(hg, grad, 1e-6, 1e-5)) << "grad_logits";
  }
  EXPECT_TRUE(dlosses.guards_intact() && dlse.guards_intact() && dgrad.guards_intact()) << "write outside the output";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CrossEntropyCuda,
    ::testing::Values(CeCase{Shape{5, 1}, DType::F32, 0}, CeCase{Shape{3, 7}, DType::F32, 0},
                      CeCase{Shape{33, 65}, DType::F32, 3}, CeCase{Shape{2, 3, 65}, DType::F32, 2},
                      CeCase{Shape{70, 1000}, DType::F32, 4, 30.0}, CeCase{Shape{3, 50257}, DType::F32, 0},
                      CeCase{Shape{4, 50257}, DType::F32, 3}, CeCase{Shape{2, 129280}, DType::F32, 0},
                      CeCase{Shape{9, 7}, DType::F32, -1}, CeCase{Shape{5, 1}, DType::BF16, 0},
                      CeCase{Shape{3, 7}, DType::BF16, 2}, CeCase{Shape{33, 65}, DType::BF16, 3},
                      CeCase{Shape{70, 1000}, DType::BF16, 4}, CeCase{Shape{3, 50257}, DType::BF16, 2},
                      CeCase{Shape{2, 129280}, DType::BF16, 0}, CeCase{Shape{4, 65}, DType::BF16, -1}),
    [](const auto& info) { return "case" + std::to_string(info.index); });

using CrossEntropyCudaMisc = testing::GpuTest;

TEST_F(CrossEntropyCudaMisc, TwoRunsAreBitIdentical) {
  for (DType act : {DType::F32, DType::BF16}) {
    const int64_t rows = 300, vocab = 50257;
    const Tensor logits = testing::to_gpu(randn({rows, vocab}, DType::F32, 111, 3.0), act);
    const Tensor targets = make_targets({rows}, static_cast<int32_t>(vocab), 5, 112).to(Device::CUDA);
    Tensor l1 = Tensor::empty({rows}, DType::F32, Device::CUDA), l2 = Tensor::empty({rows}, DType::F32, Device::CUDA);
    Tensor s1 = Tensor::empty({rows}, DType::F32, Device::CUDA), s2 = Tensor::empty({rows}, DType::F32, Device::CUDA);
    Tensor g1 = Tensor::empty({rows, vocab}, act, Device::CUDA), g2 = Tensor::empty({rows, vocab}, act, Device::CUDA);
    const Tensor st1 = Tensor::empty({kCrossEntropyStats}, DType::F64, Device::CUDA);
    const Tensor st2 = Tensor::empty({kCrossEntropyStats}, DType::F64, Device::CUDA);
    const double m1 = cross_entropy_mean(testing::gpu_exec(), logits, targets, kIgnore, l1, s1, st1);
    const double m2 = cross_entropy_mean(testing::gpu_exec(), logits, targets, kIgnore, l2, s2, st2);
    cross_entropy_backward(testing::gpu_exec(), logits, targets, s1, st1, kIgnore, 1.0, g1);
    cross_entropy_backward(testing::gpu_exec(), logits, targets, s2, st2, kIgnore, 1.0, g2);
    EXPECT_EQ(std::memcmp(&m1, &m2, sizeof(double)), 0) << dtype_name(act) << ": " << m1 << " vs " << m2;
    EXPECT_TRUE(same_bits(l1, l2) && same_bits(s1, s2) && same_bits(g1, g2)) << dtype_name(act);
    EXPECT_GT(m1, 1.0) << "a real loss (about log V + spread)";
  }
}

// -inf logits (masked vocabulary) add nothing wherever they sit, and a NaN logit makes its row's
// loss NaN whatever thread reads it, as on the CPU (the trainer's non-finite guard relies on it).
TEST_F(CrossEntropyCudaMisc, MinusInfAndNaNLogitsBehaveAsOnTheCpu) {
  const int64_t rows = 3, vocab = 65;
  Tensor logits = randn({rows, vocab}, DType::F32, 121);
  logits.data<float>()[0] = -INFINITY;                // row 0: -inf first, the rest finite
  logits.data<float>()[vocab + 40] = NAN;             // row 1: one NaN
  for (int64_t d = 0; d < vocab; d += 2) logits.data<float>()[2 * vocab + d] = -INFINITY;  // row 2: half masked
  Tensor targets = Tensor::empty({rows}, DType::I32);
  targets.data<int32_t>()[0] = 5;
  targets.data<int32_t>()[1] = 7;
  targets.data<int32_t>()[2] = 9;
  Tensor losses = Tensor::empty({rows}, DType::F32), lse = Tensor::empty({rows}, DType::F32);
  cross_entropy_forward(testing::gpu_exec(), logits, targets, kIgnore, losses, lse,
                        Tensor::empty({kCrossEntropyStats}, DType::F64));
  Tensor dl = Tensor::empty({rows}, DType::F32, Device::CUDA), ds = Tensor::empty({rows}, DType::F32, Device::CUDA);
  cross_entropy_forward(testing::gpu_exec(), logits.to(Device::CUDA), targets.to(Device::CUDA), kIgnore, dl, ds,
                        Tensor::empty({kCrossEntropyStats}, DType::F64, Device::CUDA));
  const Tensor hl = testing::to_host(dl), hs = testing::to_host(ds);
  for (int64_t r : {0, 2}) {
    EXPECT_TRUE(std::isfinite(hl.data<float>()[r])) << "row " << r;
    EXPECT_NEAR(hl.data<float>()[r], losses.data<float>()[r], 1e-5) << "row " << r;
    EXPECT_NEAR(hs.data<float>()[r], lse.data<float>()[r], 1e-5) << "row " << r;
  }
  EXPECT_TRUE(std::isnan(losses.data<float>()[1])) << "the CPU reference's NaN row";
  EXPECT_TRUE(std::isnan(hl.data<float>()[1]) && std::isnan(hs.data<float>()[1])) << "the NaN row on the GPU";
}

TEST_F(CrossEntropyCudaMisc, BadTargetsAndDtypesAreErrors) {
  const int64_t rows = 6, vocab = 11;
  const Tensor logits = randn({rows, vocab}, DType::F32, 121).to(Device::CUDA);
  Tensor targets = make_targets({rows}, static_cast<int32_t>(vocab), 0, 122);
  targets.data<int32_t>()[2] = 11;  // V itself: out of range; the first bad row
  targets.data<int32_t>()[4] = -3;
  const Tensor dt = targets.to(Device::CUDA);
  Tensor losses = Tensor::empty({rows}, DType::F32, Device::CUDA), lse = Tensor::empty({rows}, DType::F32, Device::CUDA);
  const Tensor stats = Tensor::empty({kCrossEntropyStats}, DType::F64, Device::CUDA);
  // The device records the first bad row (no throw, no wait); its reader reports it as the CPU does.
  cross_entropy_forward(testing::gpu_exec(), logits, dt, kIgnore, losses, lse, stats);
  const CrossEntropyStats st = read_cross_entropy_stats(stats);
  EXPECT_EQ(st.bad_row, 2);
  EXPECT_EQ(st.bad_target, 11);
  EXPECT_EQ(st.n_valid, rows - 2);
  testing::expect_error([&] { cross_entropy_mean(testing::gpu_exec(), logits, dt, kIgnore, losses, lse, stats); },
                        "cross_entropy_forward: targets i32[6]@cuda holds 11 at row 2, expected a class in [0, V=11)");
  const Tensor good = make_targets({rows}, static_cast<int32_t>(vocab), 0, 123).to(Device::CUDA);
  testing::expect_error(
      [&] {
        cross_entropy_forward(testing::gpu_exec(), logits, good, kIgnore,
                              Tensor::empty({rows}, DType::BF16, Device::CUDA), lse, stats);
      },
      "losses is bf16[6]@cuda, expected dtype f32");
  testing::expect_error(
      [&] {
        cross_entropy_backward(testing::gpu_exec(), logits, good, lse, stats, kIgnore, 1.0,
                               Tensor::empty({rows, vocab}, DType::BF16, Device::CUDA));
      },
      "grad_logits is bf16[6,11]@cuda, expected dtype f32");
  testing::expect_error(
      [&] { cross_entropy_forward(testing::gpu_exec(), logits, good, kIgnore, losses, lse, stats.to(Device::CPU)); },
      "stats");
}

// ---------------------------------------------------------------------------------------------
// AdamW

class AdamwCuda : public testing::GpuTest, public ::testing::WithParamInterface<std::pair<int64_t, DType>> {};

TEST_P(AdamwCuda, SeveralStepsMatchCpu) {
  const auto [n, copy_dtype] = GetParam();
  Tensor p = randn({n}, DType::F32, 201), m = Tensor::zeros({n}, DType::F32), v = Tensor::zeros({n}, DType::F32);
  Tensor copy = Tensor::empty({n}, copy_dtype);
  Tensor dp = p.to(Device::CUDA), dm = m.to(Device::CUDA), dv = v.to(Device::CUDA);
  Guarded dcopy({n}, copy_dtype);  // starts as guard garbage: overwritten every step
  AdamWParams hp;
  hp.lr = 1e-2;
  for (int64_t step : {1, 2, 3, 4, 1000}) {
    hp.step = step;
    hp.lr *= 0.9;
    hp.weight_decay = step % 2 ? 0.1 : 0.0;  // decay on and off
    const Tensor g = randn({n}, DType::F32, 210 + step, 0.05 + 0.1 * static_cast<double>(step % 5));
    adamw_step(testing::gpu_exec(), p, g, m, v, hp, copy);
    adamw_step(testing::gpu_exec(), dp, g.to(Device::CUDA), dm, dv, hp, dcopy.view);
    // The same f32 expression; at most an ulp or two apart (contraction into FMA may differ).
    ASSERT_TRUE(testing::close(dp, p, 1e-6, 1e-6)) << "param, step " << step;
    ASSERT_TRUE(testing::close(dm, m, 1e-9, 1e-6)) << "m, step " << step;
    ASSERT_TRUE(testing::close(dv, v, 1e-10, 1e-6)) << "v, step " << step;
    // The copy is EXACTLY the GPU's updated param converted (round to nearest even) ...
    const Tensor gpu_param = dp.to(Device::CPU);
    EXPECT_TRUE(same_bits(dcopy.view, gpu_param.to(copy_dtype))) << "param_copy, step " << step;
    // ... and within one rounding of the CPU's copy (the two f32 params may straddle a tie).
    EXPECT_TRUE(testing::close(dcopy.view, copy, 0.0, copy_dtype == DType::BF16 ? 8e-3 : 1e-6)) << "step " << step;
    EXPECT_TRUE(dcopy.guards_intact()) << "write outside param_copy";
  }
  // The weights really moved (the test cannot pass on a no-op).
  EXPECT_FALSE(testing::close(dp, randn({n}, DType::F32, 201), 1e-4, 0.0));
}

INSTANTIATE_TEST_SUITE_P(Sizes, AdamwCuda,
                         ::testing::Values(std::make_pair(int64_t{1}, DType::BF16), std::make_pair(int64_t{33}, DType::BF16),
                                           std::make_pair(int64_t{100003}, DType::BF16),
                                           std::make_pair(int64_t{4097}, DType::F32)),
                         [](const auto& info) { return "case" + std::to_string(info.index); });

using AdamwCudaMisc = testing::GpuTest;

TEST_F(AdamwCudaMisc, WithoutCopyMatchesWithCopyAndErrors) {
  const int64_t n = 777;
  const Tensor p0 = randn({n}, DType::F32, 221), g = randn({n}, DType::F32, 222).to(Device::CUDA);
  Tensor pa = p0.to(Device::CUDA), ma = Tensor::zeros({n}, DType::F32, Device::CUDA), va = Tensor::zeros({n}, DType::F32, Device::CUDA);
  Tensor pb = p0.to(Device::CUDA), mb = Tensor::zeros({n}, DType::F32, Device::CUDA), vb = Tensor::zeros({n}, DType::F32, Device::CUDA);
  Tensor copy = Tensor::empty({n}, DType::BF16, Device::CUDA);
  adamw_step(testing::gpu_exec(), pa, g, ma, va, AdamWParams{});
  adamw_step(testing::gpu_exec(), pb, g, mb, vb, AdamWParams{}, copy);
  EXPECT_TRUE(same_bits(pa, pb) && same_bits(ma, mb) && same_bits(va, vb)) << "the copy changes nothing else";
  testing::expect_error(
      [&] { adamw_step(testing::gpu_exec(), pa, g, ma, va, AdamWParams{}, Tensor::empty({n}, DType::BF16)); },
      "param_copy is on cpu but param is on cuda");
  const Tensor p64 = Tensor::zeros({n}, DType::F64, Device::CUDA);
  testing::expect_error([&] { adamw_step(testing::gpu_exec(), p64, p64, p64, p64, AdamWParams{}); },
                        "adamw_step: param is f64[777]@cuda, expected dtype f32");
}

// ---------------------------------------------------------------------------------------------
// Gradient norm and clipping

std::vector<Tensor> grad_set(uint64_t seed) {
  std::vector<Tensor> out;
  const std::vector<int64_t> sizes = {1, 7, 4097, 300001, 33, 1048576 + 13};
  for (size_t i = 0; i < sizes.size(); ++i) out.push_back(randn({sizes[i]}, DType::F32, seed + i, 0.01 * (i + 1)));
  return out;
}

std::vector<Tensor> to_cuda(const std::vector<Tensor>& xs) {
  std::vector<Tensor> out;
  for (const Tensor& x : xs) out.push_back(x.to(Device::CUDA));
  return out;
}

using GradNormCuda = testing::GpuTest;

TEST_F(GradNormCuda, MatchesCpuDoubleSum) {
  const std::vector<Tensor> host = grad_set(301);
  const double expected = grad_norm(testing::gpu_exec(), host);
  const double got = grad_norm(testing::gpu_exec(), to_cuda(host));
  EXPECT_NEAR(got, expected, 1e-6 * expected);
  EXPECT_GT(expected, 1.0);
  // One tensor alone, and a 2-D one (taken as flat).
  EXPECT_NEAR(grad_norm(testing::gpu_exec(), {host[3].to(Device::CUDA)}), grad_norm(testing::gpu_exec(), {host[3]}),
              1e-6 * grad_norm(testing::gpu_exec(), {host[3]}));
  const Tensor two_d = host[2].slice(0, 4096).reshape({64, 64});
  EXPECT_NEAR(grad_norm(testing::gpu_exec(), {two_d.to(Device::CUDA)}), grad_norm(testing::gpu_exec(), {two_d}),
              1e-6 * grad_norm(testing::gpu_exec(), {two_d}));
}

TEST_F(GradNormCuda, ClipScalesInPlaceLikeTheCpu) {
  std::vector<Tensor> host = grad_set(311);
  const double norm = grad_norm(testing::gpu_exec(), host);
  // Guarded device copies: the scale must not write outside any tensor.
  std::vector<Guarded> guarded;
  std::vector<Tensor> dev;
  for (const Tensor& h : host) {
    guarded.emplace_back(h.shape(), DType::F32);
    guarded.back().view.copy_from(h.to(Device::CUDA));
  }
  for (const Guarded& gd : guarded) dev.push_back(gd.view);
  const double max_norm = norm / 3.0;
  const double cpu_norm = clip_grad_norm(testing::gpu_exec(), host, max_norm);
  const double gpu_norm = clip_grad_norm(testing::gpu_exec(), dev, max_norm);
  EXPECT_NEAR(gpu_norm, cpu_norm, 1e-6 * cpu_norm) << "the norm before clipping";
  for (size_t i = 0; i < host.size(); ++i) {
    EXPECT_TRUE(testing::close(dev[i], host[i], 0.0, 1e-6)) << "grads[" << i << "]";
    EXPECT_TRUE(guarded[i].guards_intact()) << "grads[" << i << "]";
  }
  EXPECT_NEAR(grad_norm(testing::gpu_exec(), dev), max_norm, 1e-5 * max_norm) << "clipped to max_norm";
  // Below the threshold nothing moves, bit for bit.
  const std::vector<Tensor> before = {dev[2].to(Device::CPU), dev[5].to(Device::CPU)};
  clip_grad_norm(testing::gpu_exec(), dev, 10.0 * norm);
  EXPECT_TRUE(same_bits(dev[2], before[0]) && same_bits(dev[5], before[1]));
}

TEST_F(GradNormCuda, NonFiniteNormLeavesGradientsAlone) {
  Tensor h = randn({1001}, DType::F32, 321);
  h.data<float>()[500] = std::nanf("");
  const Tensor d = h.to(Device::CUDA), other = randn({77}, DType::F32, 322, 10.0).to(Device::CUDA);
  const Tensor other_before = other.to(Device::CPU);
  EXPECT_TRUE(std::isnan(clip_grad_norm(testing::gpu_exec(), {other, d}, 1.0)));
  EXPECT_TRUE(same_bits(other, other_before)) << "a NaN norm must not scale anything";
}

TEST_F(GradNormCuda, TwoRunsAreBitIdentical) {
  const std::vector<Tensor> dev = to_cuda(grad_set(331));
  const double a = grad_norm(testing::gpu_exec(), dev), b = grad_norm(testing::gpu_exec(), dev);
  EXPECT_EQ(std::memcmp(&a, &b, sizeof(double)), 0) << a << " vs " << b;
}

TEST_F(GradNormCuda, MixedDevicesAndDtypesAreErrors) {
  const Tensor gpu = randn({5}, DType::F32, 341).to(Device::CUDA), cpu = randn({5}, DType::F32, 342);
  testing::expect_error([&] { grad_norm(testing::gpu_exec(), {gpu, gpu, cpu}); },
                        "grad_norm: grads[2] is f32[5]@cpu but grads[0] is on cuda");
  testing::expect_error(
      [&] {
        clip_grad_norm(testing::gpu_exec(), {cpu, gpu}, 1.0);
      },
      "clip_grad_norm: grads[1] is f32[5]@cuda but grads[0] is on cpu");
  const Tensor bf = Tensor::zeros({5}, DType::BF16, Device::CUDA);
  testing::expect_error(
      [&] {
        grad_norm(testing::gpu_exec(), {gpu, bf});
      },
      "grads[1] is bf16[5]@cuda, expected dtype f32");
}

// ---------------------------------------------------------------------------------------------
// The step's statistics

// Two micro-batches of heads' and MoE layers' statistics accumulated on the GPU and on the CPU:
// the losses within double rounding (the kernel's thread 0 does the reference's operations in its
// order; only the compilers' contraction into FMAs may differ), loads and last loads and the first
// bad target exactly, and reset clears it all.
using StepStatsCuda = testing::GpuTest;

TEST_F(StepStatsCuda, MatchesCpu) {
  const StepStatsLayout l{3, 4, 64};
  auto make = [](const std::vector<double>& v, Device d) {
    Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::F64);
    std::copy(v.begin(), v.end(), t.data<double>());
    return t.to(d);
  };
  const Tensor cpu = Tensor::empty({l.size()}, DType::F64), gpu = Tensor::empty({l.size()}, DType::F64, Device::CUDA);
  step_stats_reset(Exec{}, cpu);
  step_stats_reset(testing::gpu_exec(), gpu);
  for (int micro = 0; micro < 2; ++micro) {
    for (const Device d : {Device::CPU, Device::CUDA}) {
      std::vector<Tensor> heads, moe;
      for (int64_t k = 0; k < l.heads; ++k)  // head 2 of the second micro-batch holds a bad target
        heads.push_back(make({3.7 * (k + 1) + micro, 5.0 + k, micro == 1 && k == 2 ? 9.0 : -1.0, 123.0}, d));
      for (int64_t m = 0; m < l.moe_layers; ++m) {
        const Tensor r = testing::randint({l.experts}, 100, 50 + 10 * micro + m);
        std::vector<double> v = {0.01 * (m + 1), 0.002 * m, 1e-4 * (micro + 1)};
        for (int64_t e = 0; e < l.experts; ++e) v.push_back(r.data<int32_t>()[e]);
        moe.push_back(make(v, d));
      }
      step_stats_accumulate(d == Device::CPU ? Exec{} : testing::gpu_exec(), l, heads, moe, 0.3 / 2, 0.5,
                            d == Device::CPU ? cpu : gpu);
    }
  }
  const Tensor g = gpu.to(Device::CPU);
  for (int64_t i = 0; i < l.size(); ++i) {
    const double a = g.data<double>()[i], b = cpu.data<double>()[i];
    EXPECT_NEAR(a, b, 1e-15 * std::fabs(b)) << "entry " << i;
    if (i < StepStatsLayout::kTotal || i >= l.load(0)) {
      EXPECT_EQ(a, b) << "entry " << i << " (bad target, loads)";
    }
  }
  EXPECT_EQ(g.data<double>()[StepStatsLayout::kBadHead], 3.0);
  step_stats_reset(testing::gpu_exec(), gpu);
  const Tensor z = gpu.to(Device::CPU);
  for (int64_t i = 0; i < l.size(); ++i) EXPECT_EQ(z.data<double>()[i], 0.0) << "entry " << i << " after reset";
}

}  // namespace
}  // namespace moelab
