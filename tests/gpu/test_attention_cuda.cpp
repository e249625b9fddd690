// Causal attention on the GPU against the CPU reference (core/ops/attention.h), for both CUDA
// kernel families: the fused flash kernels (AttentionImpl::Gemm, the default) and the reference
// kernels (AttentionImpl::Naive). Forward out + lse and backward grad_q / grad_k / grad_v, f32
// (tight) and bf16 activations (tests/README.md: the policy for the reference kernels, twice that
// for the fused ones, and the fused kernels' error at most twice the reference kernels'), flash vs
// reference agreement, guard values around every output, outputs pre-filled with garbage, bit-
// identical reruns. Shapes: B = T = 1, tails of the 16/32 tiles (T = 33, 65, 130), MLA dims
// Dqk 192 / Dv 128, GQA, MQA, odd dims 12 / 8 and 7 / 5, the 256 limit.
// Then the KV-cache decode attentions (attention_decode_forward, mla_decode_attention) against
// their CPU references, with NaN in the cache rows they must not read.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "core/ops/attention.h"
#include "core/ops/attention_decode.h"
#include "core/ops/mla_decode.h"
#include "tests/gpu/gpu_harness.h"

namespace moelab {
namespace {
using testing::Guarded;
using testing::randn;
using testing::to_gpu;
using testing::to_host;

// Largest |a - b| over two CPU f32 tensors of the same shape.
double max_abs_diff(const Tensor& a, const Tensor& b) {
  double m = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i)
    m = std::max(m, std::abs(static_cast<double>(a.data<float>()[i]) - static_cast<double>(b.data<float>()[i])));
  return m;
}

// A CPU f32 tensor as the GPU will see it: bf16-rounded when the activations are bf16.
Tensor as_act(const Tensor& x, DType act) { return act == DType::BF16 ? testing::bf16_round(x) : x; }

std::string dtype_str(DType t) { return t == DType::BF16 ? "bf16" : "f32"; }

// ------------------------------------------------------------------------------------------------
// Training attention.

struct Dims {
  int64_t B, T, H, Hkv, Dqk, Dv;
};

struct Inputs {  // CPU f32, already bf16-rounded for bf16 runs
  Tensor q, k, v, grad_out;
};

Inputs make_inputs(const Dims& d, DType act, uint64_t seed) {
  return {as_act(randn({d.B, d.T, d.H, d.Dqk}, DType::F32, seed), act),
          as_act(randn({d.B, d.T, d.Hkv, d.Dqk}, DType::F32, seed + 1), act),
          as_act(randn({d.B, d.T, d.Hkv, d.Dv}, DType::F32, seed + 2), act),
          as_act(randn({d.B, d.T, d.H, d.Dv}, DType::F32, seed + 3), act)};
}

float scale_of(const Dims& d) { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(d.Dqk))); }

constexpr int kOutputs = 5;
const char* const kNames[kOutputs] = {"out", "lse", "grad_q", "grad_k", "grad_v"};

// The CPU reference (f32, the Naive loops: the specification).
std::vector<Tensor> cpu_attention(const Inputs& in, const Dims& d) {
  Tensor out = Tensor::empty({d.B, d.T, d.H, d.Dv}, DType::F32), lse = Tensor::empty({d.B, d.H, d.T}, DType::F32);
  Tensor gq = Tensor::empty(in.q.shape(), DType::F32), gk = Tensor::empty(in.k.shape(), DType::F32);
  Tensor gv = Tensor::empty(in.v.shape(), DType::F32);
  attention_forward(testing::gpu_exec(), in.q, in.k, in.v, scale_of(d), out, lse, AttentionImpl::Naive);
  attention_backward(testing::gpu_exec(), in.grad_out, in.q, in.k, in.v, out, lse, scale_of(d), gq, gk, gv,
                     AttentionImpl::Naive);
  return {out, lse, gq, gk, gv};
}

// The GPU forward + backward with one implementation, every output between guards and pre-filled
// with the guard value (garbage that must be overwritten). The backward uses the GPU's own out / lse.
struct GpuRun {
  std::vector<Guarded> outputs;  // out, lse, grad_q, grad_k, grad_v
  std::vector<Tensor> host() const {
    std::vector<Tensor> h;
    for (const Guarded& g : outputs) h.push_back(g.host_f32());
    return h;
  }
  bool guards_intact() const {
    for (const Guarded& g : outputs)
      if (!g.guards_intact()) return false;
    return true;
  }
};

GpuRun gpu_attention(const Inputs& in, const Dims& d, DType act, AttentionImpl impl) {
  GpuRun r{{Guarded({d.B, d.T, d.H, d.Dv}, act), Guarded({d.B, d.H, d.T}, DType::F32), Guarded(in.q.shape(), act),
            Guarded(in.k.shape(), act), Guarded(in.v.shape(), act)}};
  const Tensor q = to_gpu(in.q, act), k = to_gpu(in.k, act), v = to_gpu(in.v, act), go = to_gpu(in.grad_out, act);
  attention_forward(testing::gpu_exec(), q, k, v, scale_of(d), r.outputs[0].view, r.outputs[1].view, impl);
  attention_backward(testing::gpu_exec(), go, q, k, v, r.outputs[0].view, r.outputs[1].view, scale_of(d),
                     r.outputs[2].view, r.outputs[3].view, r.outputs[4].view, impl);
  return r;
}

class AttentionCuda : public testing::GpuTest, public ::testing::WithParamInterface<std::tuple<Dims, DType>> {};

TEST_P(AttentionCuda, FlashAndReferenceKernelsMatchCpu) {
  const auto [d, act] = GetParam();
  const bool bf16 = act == DType::BF16;
  const Inputs in = make_inputs(d, act, 100 + d.T);
  const std::vector<Tensor> cpu = cpu_attention(in, d);
  const GpuRun flash_run = gpu_attention(in, d, act, AttentionImpl::Gemm);
  const GpuRun ref_run = gpu_attention(in, d, act, AttentionImpl::Naive);
  const std::vector<Tensor> flash = flash_run.host(), ref = ref_run.host();
  EXPECT_TRUE(flash_run.guards_intact()) << "flash kernels wrote outside an output";
  EXPECT_TRUE(ref_run.guards_intact()) << "reference kernels wrote outside an output";

  for (int i = 0; i < kOutputs; ++i) {
    // lse is f32 and computed in f32 from exactly the CPU's inputs: tight in both modes. The bf16
    // activations follow the policy, twice it for the fused kernels.
    const bool stat = i == 1;
    const double atol = stat ? 1e-5 : testing::act_atol(act), rtol = stat ? 1e-5 : testing::act_rtol(act);
    const double fused = bf16 && !stat ? 2.0 : 1.0;
    EXPECT_TRUE(testing::close(ref[i], cpu[i], atol, rtol)) << "reference kernel, " << kNames[i];
    EXPECT_TRUE(testing::close(flash[i], cpu[i], fused * atol, fused * rtol)) << "flash kernel, " << kNames[i];
    EXPECT_TRUE(testing::close(flash[i], ref[i], fused * atol, fused * rtol)) << "flash vs reference, " << kNames[i];
    if (bf16 && !stat) {
      // The fused kernel's error against the f32 reference is at most twice the naive kernel's
      // (plus a floor for outputs whose error is a single bf16 rounding of tiny values).
      const double e_flash = max_abs_diff(flash[i], cpu[i]), e_ref = max_abs_diff(ref[i], cpu[i]);
      EXPECT_LE(e_flash, 2.0 * e_ref + 1e-3) << kNames[i] << ": flash error " << e_flash << ", reference " << e_ref;
    }
  }
}

const Dims kShapes[] = {
    {1, 1, 1, 1, 12, 8},      // one token, one head
    {2, 33, 3, 3, 12, 8},     // odd dims, T past one 32-key tile
    {1, 65, 4, 2, 64, 64},    // GQA, tails of both tile sizes
    {2, 130, 3, 1, 32, 48},   // MQA, several tiles
    {1, 70, 2, 2, 192, 128},  // MLA head dims (Dn 128 + Dr 64, Dv 128)
    {2, 17, 4, 2, 7, 5},      // Dqk, Dv below one warp's width
    {1, 40, 2, 1, 256, 256},  // the largest head dims (shared memory above 48 KiB)
};

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionCuda, ::testing::Combine(::testing::ValuesIn(kShapes),
                                                                   ::testing::Values(DType::F32, DType::BF16)),
                         [](const auto& info) {
                           const Dims& d = std::get<0>(info.param);
                           return "B" + std::to_string(d.B) + "T" + std::to_string(d.T) + "H" + std::to_string(d.H) +
                                  "Hkv" + std::to_string(d.Hkv) + "D" + std::to_string(d.Dqk) + "x" +
                                  std::to_string(d.Dv) + "_" + dtype_str(std::get<1>(info.param));
                         });

// Peaked softmax rows (q scaled by 8: scores spread over tens of units), so the online softmax's
// running maximum jumps between key tiles and every rescale factor is far from 1: a wrong rescale
// shows at once. f32, where the tolerance is tight.
using AttentionCudaSharp = testing::GpuTest;

TEST_F(AttentionCudaSharp, LargeScoresRescaleCorrectly) {
  const Dims d{2, 97, 2, 1, 64, 32};
  Inputs in = make_inputs(d, DType::F32, 61);
  float* q = in.q.data<float>();
  for (int64_t i = 0; i < in.q.numel(); ++i) q[i] *= 8.0f;
  const std::vector<Tensor> cpu = cpu_attention(in, d);
  for (AttentionImpl impl : {AttentionImpl::Gemm, AttentionImpl::Naive}) {
    const GpuRun run = gpu_attention(in, d, DType::F32, impl);
    const std::vector<Tensor> gpu = run.host();
    for (int i = 0; i < kOutputs; ++i)  // scores of order 50: the sums are longer in ulps, so 1e-4
      EXPECT_TRUE(testing::close(gpu[i], cpu[i], 1e-4, 1e-4))
          << (impl == AttentionImpl::Gemm ? "flash " : "reference ") << kNames[i];
    EXPECT_TRUE(run.guards_intact());
  }
}

using AttentionCudaDeterminism = testing::GpuTest;

TEST_F(AttentionCudaDeterminism, FlashRunsTwiceBitIdentical) {
  const Dims d{2, 130, 4, 2, 192, 128};
  for (DType act : {DType::F32, DType::BF16}) {
    const Inputs in = make_inputs(d, act, 7);
    const std::vector<Tensor> a = gpu_attention(in, d, act, AttentionImpl::Gemm).host();
    const std::vector<Tensor> b = gpu_attention(in, d, act, AttentionImpl::Gemm).host();
    for (int i = 0; i < kOutputs; ++i)
      EXPECT_TRUE(testing::close(b[i], a[i], 0.0, 0.0)) << dtype_str(act) << " " << kNames[i];
  }
}

using AttentionCudaErrors = testing::GpuTest;

TEST_F(AttentionCudaErrors, NamesTheBadValue) {
  auto g = [](const Shape& s, DType t = DType::F32) { return Tensor::zeros(s, t, Device::CUDA); };
  // Head dims above the kernels' register budget.
  testing::expect_error(
      [&] {
        attention_forward(testing::gpu_exec(), g({1, 2, 1, 257}), g({1, 2, 1, 257}), g({1, 2, 1, 8}), 0.5f,
                          g({1, 2, 1, 8}), g({1, 1, 2}));
      },
      "the CUDA kernels take at most 256");
  // lse is a statistic: f32 on CUDA even with bf16 activations.
  const DType bf = DType::BF16;
  testing::expect_error(
      [&] {
        attention_forward(testing::gpu_exec(), g({1, 2, 1, 4}, bf), g({1, 2, 1, 4}, bf), g({1, 2, 1, 3}, bf), 0.5f,
                          g({1, 2, 1, 3}, bf), g({1, 1, 2}, bf));
      },
      "lse is bf16[1,1,2]@cuda, expected dtype f32");
}

// ------------------------------------------------------------------------------------------------
// KV-cache decode.

// Cache rows at positions >= from (of a CPU f32 [B, S, ...] tensor) become NaN: a kernel that
// reads past the causal limit then produces NaN, which never passes testing::close.
void poison_from(const Tensor& cache, int64_t from) {
  const int64_t B = cache.size(0), S = cache.size(1), w = cache.numel() / (B * S);
  float* p = cache.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = from; j < S; ++j)
      for (int64_t i = 0; i < w; ++i) p[(b * S + j) * w + i] = std::numeric_limits<float>::quiet_NaN();
}

struct DecodeDims {
  int64_t B, n, S, H, Hkv, Dqk, Dv, pos;
};

class AttentionDecodeCuda : public testing::GpuTest,
                            public ::testing::WithParamInterface<std::tuple<DecodeDims, DType>> {};

TEST_P(AttentionDecodeCuda, MatchesCpuReference) {
  const auto [d, act] = GetParam();
  const Tensor q = as_act(randn({d.B, d.n, d.H, d.Dqk}, DType::F32, 41), act);
  const Tensor k = as_act(randn({d.B, d.S, d.Hkv, d.Dqk}, DType::F32, 42), act);
  const Tensor v = as_act(randn({d.B, d.S, d.Hkv, d.Dv}, DType::F32, 43), act);
  poison_from(k, d.pos + d.n);
  poison_from(v, d.pos + d.n);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d.Dqk)));
  Tensor expected = Tensor::empty({d.B, d.n, d.H, d.Dv}, DType::F32);
  attention_decode_forward(testing::gpu_exec(), q, k, v, scale, d.pos, expected);
  Guarded out({d.B, d.n, d.H, d.Dv}, act);
  attention_decode_forward(testing::gpu_exec(), to_gpu(q, act), to_gpu(k, act), to_gpu(v, act), scale, d.pos, out.view);
  EXPECT_TRUE(testing::close(out.host_f32(), expected, testing::act_atol(act), testing::act_rtol(act)));
  EXPECT_TRUE(out.guards_intact()) << "write outside the output";
}

const DecodeDims kDecodeShapes[] = {
    {2, 1, 9, 4, 2, 12, 8, 0},         // the first token: one visible key
    {2, 1, 9, 4, 2, 12, 8, 8},         // the cache's last slot
    {1, 3, 20, 2, 1, 64, 48, 5},       // MQA, a few new tokens mid-cache
    {2, 6, 6, 3, 3, 7, 5, 0},          // prefill of the whole cache, odd dims
    {1, 2, 300, 4, 2, 192, 128, 200},  // long cache, MLA-sized heads
    {1, 1, 77, 2, 2, 256, 256, 60},
};

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionDecodeCuda,
                         ::testing::Combine(::testing::ValuesIn(kDecodeShapes), ::testing::Values(DType::F32, DType::BF16)),
                         [](const auto& info) {
                           return "case" + std::to_string(info.index) + "_" + dtype_str(std::get<1>(info.param));
                         });

struct MlaDims {
  int64_t B, n, S, H, Dn, Dr, Dv, Ckv, pos;
};

class MlaDecodeCuda : public testing::GpuTest,
                      public ::testing::WithParamInterface<std::tuple<MlaDims, std::tuple<DType, DType>>> {};

TEST_P(MlaDecodeCuda, MatchesCpuReference) {
  const auto [d, dtypes] = GetParam();
  const auto [act, wdt] = dtypes;  // activations (q, ckv, kr, out), w_kvb
  const Tensor q = as_act(randn({d.B, d.n, d.H, d.Dn + d.Dr}, DType::F32, 51), act);
  const Tensor w = as_act(randn({d.H * (d.Dn + d.Dv), d.Ckv}, DType::F32, 52, 0.1), wdt);
  const Tensor ckv = as_act(randn({d.B, d.S, d.Ckv}, DType::F32, 53), act);
  const Tensor kr = as_act(randn({d.B, d.S, d.Dr}, DType::F32, 54), act);
  poison_from(ckv, d.pos + d.n);
  poison_from(kr, d.pos + d.n);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d.Dn + d.Dr)));
  Tensor expected = Tensor::empty({d.B, d.n, d.H, d.Dv}, DType::F32);
  mla_decode_attention(testing::gpu_exec(), q, w, ckv, kr, scale, d.pos, expected);
  Guarded out({d.B, d.n, d.H, d.Dv}, act);
  mla_decode_attention(testing::gpu_exec(), to_gpu(q, act), to_gpu(w, wdt), to_gpu(ckv, act), to_gpu(kr, act), scale,
                       d.pos, out.view);
  EXPECT_TRUE(testing::close(out.host_f32(), expected, testing::act_atol(act), testing::act_rtol(act)));
  EXPECT_TRUE(out.guards_intact()) << "write outside the output";
}

std::string mla_case_name(const ::testing::TestParamInfo<MlaDecodeCuda::ParamType>& info) {
  const auto& [act, wdt] = std::get<1>(info.param);
  return "case" + std::to_string(info.index) + "_" + dtype_str(act) + "_w" + dtype_str(wdt);
}

const MlaDims kMlaShapes[] = {
    {2, 1, 7, 3, 2, 4, 3, 6, 0},           // the first token
    {2, 2, 7, 3, 2, 4, 3, 6, 4},           // two new tokens mid-cache
    {2, 5, 5, 2, 12, 8, 8, 40, 0},         // prefill of the whole cache
    {1, 3, 90, 4, 32, 16, 32, 96, 60},
    {1, 1, 70, 2, 128, 64, 128, 512, 69},  // DeepSeek-V3's head dims and latent, the cache's last slot
};

INSTANTIATE_TEST_SUITE_P(Shapes, MlaDecodeCuda,
                         ::testing::Combine(::testing::ValuesIn(kMlaShapes),
                                            ::testing::Values(std::make_tuple(DType::F32, DType::F32),
                                                              std::make_tuple(DType::BF16, DType::BF16),
                                                              std::make_tuple(DType::BF16, DType::F32))),
                         mla_case_name);

}  // namespace
}  // namespace moelab
