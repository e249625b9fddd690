// The FP8 GEMM with fine-grained scales on the GPU (cuda/fp8_gemm.h):
//   C[i, j] = (accumulate ? C[i, j] : 0) + sum_c (sum_{r in c} a[i, r] b[j, r]) * sa(i, c) * sb(j, c)
// against ref::fp8_gemm (core/ops/fp8_matmul.h: the same chunked sum in f64, exact products).
//   fp8_gemm_reference (our kernel): f32 chunk sums and f32 promotion, so the error is bounded by
//     the f32 rounding of its sums: |gpu - ref| <= (w + L + 3) 2^-24 S, with w = min(k, 128) the
//     chunk width, L = ceil(k / 128) the chunks and S the same sum over absolute values (|C| included
//     when accumulating); plus the one bf16 rounding, 2^-8 |result|, for a bf16 C.
//   Blas::gemm_fp8 (cuBLASLt block scaling, sm_90 only): Hopper's FP8 tensor cores sum a chunk with
//     fewer than f32's bits (DeepSeek-V3 measured ~14 bits), so its bound is 2^-8 S (plus the bf16
//     rounding): loose, but the scales differ by up to 2^16 between tiles, so a scale read from the
//     wrong place (cuBLASLt's layouts differ from ours: cuda/blas.cpp) costs errors of the order of
//     S itself. Skipped, with a message, where gemm_fp8 declines.
// Operands: random finite e4m3 bytes (the whole range, 2^-9 to 448, both signs, zeros) and random
// scales 2^[-8, 8] * [1, 2) per tile; shapes that are not multiples of 128 (partial chunks of K and
// partial 128-row blocks); Row128 and Block128 scales on either side; f32 and bf16 C; accumulating
// or not. Guard rows around C catch stray writes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <vector>

#include "core/gpu_context.h"
#include "core/ops/fp8_matmul.h"
#include "core/ops/fp8_quant.h"
#include "cuda/blas.h"
#include "cuda/fp8_gemm.h"
#include "tests/gpu/gpu_harness.h"

namespace moelab {
namespace {

using testing::gpu_exec;
using testing::Guarded;
using testing::randn;

const char* tile_name(Fp8Tile t) { return t == Fp8Tile::Row128 ? "Row128" : "Block128"; }

// One e4m3 operand [rows, k] with the scales of its tiles (fp8_scales_shape(rows, k, tile)), on the
// host and on the GPU (flat buffers of at least one element, so that empty shapes get pointers too).
struct Operand {
  Fp8Tile tile = Fp8Tile::Row128;
  std::vector<fp8_e4m3_t> q;
  std::vector<float> s;
  Tensor q_gpu, s_gpu;

  Operand(int64_t rows, int64_t k, Fp8Tile tile_in, uint64_t seed) : tile(tile_in) {
    std::mt19937_64 rng(seed);
    q.resize(static_cast<size_t>(rows * k));
    for (auto& v : q) {
      uint8_t b = static_cast<uint8_t>(rng() & 0xffu);
      if ((b & 0x7fu) == 0x7fu) b ^= 0x01u;  // 0x7f / 0xff are NaN: use +-448 instead
      v.bits = b;
    }
    const Shape ss = fp8_scales_shape(rows, k, tile);
    s.resize(static_cast<size_t>(ss.numel()));
    for (auto& v : s)
      v = std::ldexp(1.0f + static_cast<float>(rng() % 1024) / 1024.0f, static_cast<int>(rng() % 17) - 8);
    q_gpu = upload(q.data(), q.size(), DType::FP8_E4M3);
    s_gpu = upload(s.data(), s.size(), DType::F32);
  }
  const uint8_t* q_ptr() const { return static_cast<const uint8_t*>(q_gpu.raw()); }
  const float* s_ptr() const { return s_gpu.data<float>(); }

  template <typename T>
  static Tensor upload(const T* data, size_t n, DType dtype) {
    Tensor h = Tensor::zeros({std::max<int64_t>(static_cast<int64_t>(n), 1)}, dtype);
    if (n > 0) std::memcpy(h.raw(), data, n * sizeof(T));
    return h.to(Device::CUDA);
  }
};

struct Case {
  int64_t m, n, k;
  Fp8Tile a_tile, b_tile;
  bool c_bf16, accumulate;
};

std::string describe(const Case& c) {
  std::ostringstream os;
  os << "m " << c.m << ", n " << c.n << ", k " << c.k << ", a " << tile_name(c.a_tile) << ", b "
     << tile_name(c.b_tile) << ", C " << (c.c_bf16 ? "bf16" : "f32") << (c.accumulate ? ", accumulate" : "");
  return os.str();
}

// Everything one case needs: operands, C (guarded, with its initial values), the f64 reference and
// S, the reference over absolute values.
struct Problem {
  Case cs;
  Operand a, b;
  Guarded c;
  Tensor c0;  // C's initial values as f32 (the values the GPU holds: bf16-rounded for a bf16 C)
  std::vector<double> expected, magnitude;

  Problem(const Case& c_in, uint64_t seed)
      : cs(c_in),
        a(c_in.m, c_in.k, c_in.a_tile, seed),
        b(c_in.n, c_in.k, c_in.b_tile, seed + 1),
        c({std::max<int64_t>(c_in.m, 1), std::max<int64_t>(c_in.n, 1)}, c_in.c_bf16 ? DType::BF16 : DType::F32) {
    const DType c_dtype = cs.c_bf16 ? DType::BF16 : DType::F32;
    const Tensor init = randn({std::max<int64_t>(cs.m, 1), std::max<int64_t>(cs.n, 1)}, DType::F32, seed + 2, 100.0);
    c.view.copy_from(init.to(c_dtype).to(Device::CUDA));
    c0 = c.host_f32();
    const int64_t mn = cs.m * cs.n;
    expected.assign(static_cast<size_t>(mn), 0.0);
    magnitude.assign(static_cast<size_t>(mn), 0.0);
    for (int64_t i = 0; i < cs.m; ++i)
      for (int64_t j = 0; j < cs.n; ++j) {
        const double v = c0.data<float>()[i * c0.size(1) + j];
        expected[i * cs.n + j] = v;
        magnitude[i * cs.n + j] = std::fabs(v);
      }
    if (mn == 0) return;
    ref::fp8_gemm(a.q.data(), a.s.data(), a.tile, b.q.data(), b.s.data(), b.tile, expected.data(), cs.m, cs.n, cs.k,
                  cs.accumulate);
    std::vector<fp8_e4m3_t> qa_abs(a.q), qb_abs(b.q);
    for (auto& v : qa_abs) v.bits &= 0x7fu;
    for (auto& v : qb_abs) v.bits &= 0x7fu;
    ref::fp8_gemm(qa_abs.data(), a.s.data(), a.tile, qb_abs.data(), b.s.data(), b.tile, magnitude.data(), cs.m, cs.n,
                  cs.k, cs.accumulate);
  }

  cuda::Fp8GemmParams params() const {
    cuda::Fp8GemmParams p;
    p.a = a.q_ptr();
    p.a_scales = a.s_ptr();
    p.a_tile = cs.a_tile;
    p.b = b.q_ptr();
    p.b_scales = b.s_ptr();
    p.b_tile = cs.b_tile;
    p.c = c.view.raw();
    p.c_bf16 = cs.c_bf16;
    p.accumulate = cs.accumulate;
    p.m = cs.m;
    p.n = cs.n;
    p.k = cs.k;
    p.stream = gpu_exec().stream;
    return p;
  }

  // |C - expected| <= rel * S (+ the bf16 rounding) everywhere, and the guards intact.
  ::testing::AssertionResult matches(double rel) const {
    if (!c.guards_intact()) return ::testing::AssertionFailure() << "a guard row of C was overwritten";
    const Tensor h = c.host_f32();
    int64_t bad = 0, worst = -1;
    double worst_ratio = 0.0;
    for (int64_t i = 0; i < cs.m * cs.n; ++i) {
      const double got = h.data<float>()[i], want = expected[i];
      double tol = rel * magnitude[i];
      if (cs.c_bf16) tol += std::ldexp(std::fabs(want) + tol, -8);
      const double err = std::fabs(got - want);
      const double ratio = tol > 0 ? err / tol : (err > 0 ? INFINITY : 0.0);
      if (!(err <= tol)) ++bad;
      if (!(ratio <= worst_ratio)) {
        worst_ratio = ratio;
        worst = i;
      }
    }
    std::ostringstream os;
    if (worst >= 0)
      os << "worst at C[" << worst / cs.n << ", " << worst % cs.n << "]: " << h.data<float>()[worst] << " vs "
         << expected[worst] << " (S " << magnitude[worst] << "), " << worst_ratio << " x the tolerance";
    if (bad == 0) return ::testing::AssertionSuccess() << os.str();
    return ::testing::AssertionFailure() << bad << " of " << cs.m * cs.n << " elements out of tolerance; " << os.str();
  }

  // C still holds its initial values, bit for bit.
  ::testing::AssertionResult untouched() const {
    if (!c.guards_intact()) return ::testing::AssertionFailure() << "a guard row of C was overwritten";
    const Tensor h = c.host_f32();
    if (std::memcmp(h.raw(), c0.raw(), h.nbytes()) != 0) return ::testing::AssertionFailure() << "C was written";
    return ::testing::AssertionSuccess();
  }
};

// The reference kernel's bound: f32 sums of a chunk of w products, two products, L + 1 additions.
double reference_rel(int64_t k) {
  const int64_t w = std::min<int64_t>(k, kFp8BlockSize), L = fp8_num_blocks(k);
  return static_cast<double>(w + L + 3) * std::ldexp(1.0, -24);
}

constexpr double kCublasRel = 1.0 / 256;  // 2^-8: Hopper's FP8 accumulation (header)

class Fp8GemmCuda : public testing::GpuTest {};

TEST_F(Fp8GemmCuda, ReferenceKernelMatchesCpu) {
  const int64_t shapes[][3] = {{3, 200, 300}, {130, 64, 128}, {5, 7, 1}, {17, 33, 1000}, {1, 1, 129}, {64, 300, 256}};
  const std::pair<Fp8Tile, Fp8Tile> tiles[] = {{Fp8Tile::Row128, Fp8Tile::Block128},
                                               {Fp8Tile::Row128, Fp8Tile::Row128},
                                               {Fp8Tile::Block128, Fp8Tile::Row128},
                                               {Fp8Tile::Block128, Fp8Tile::Block128}};
  uint64_t seed = 100;
  for (const auto& s : shapes)
    for (const auto& [ta, tb] : tiles)
      for (bool c_bf16 : {false, true})
        for (bool accumulate : {false, true}) {
          const Case cs{s[0], s[1], s[2], ta, tb, c_bf16, accumulate};
          SCOPED_TRACE(describe(cs));
          Problem pb(cs, seed += 3);
          cuda::fp8_gemm_reference(pb.params());
          EXPECT_TRUE(pb.matches(reference_rel(cs.k)));
        }
}

// k = 0: C = 0, or unchanged when accumulating; m = 0 or n = 0: nothing written.
TEST_F(Fp8GemmCuda, ReferenceKernelEmptyShapes) {
  for (bool c_bf16 : {false, true}) {
    {
      Problem pb({4, 5, 0, Fp8Tile::Row128, Fp8Tile::Block128, c_bf16, false}, 7);
      cuda::fp8_gemm_reference(pb.params());
      EXPECT_TRUE(pb.matches(0.0));  // expected = 0 exactly
    }
    {
      Problem pb({4, 5, 0, Fp8Tile::Row128, Fp8Tile::Block128, c_bf16, true}, 8);
      cuda::fp8_gemm_reference(pb.params());
      EXPECT_TRUE(pb.untouched());
    }
    for (const auto& [m, n] : {std::pair<int64_t, int64_t>{0, 5}, {4, 0}}) {
      Problem pb({m, n, 16, Fp8Tile::Row128, Fp8Tile::Row128, c_bf16, false}, 9);
      cuda::fp8_gemm_reference(pb.params());
      EXPECT_TRUE(pb.untouched());
    }
  }
}

// cuBLASLt's block-scaled FP8 GEMM against the f64 reference, on shapes it documents as supported
// (m, n multiples of 4, k of 16, 16-byte aligned rows of C). The first case tells whether this GPU
// and cuBLAS have the feature at all; past it, every case must run.
TEST_F(Fp8GemmCuda, CublasMatchesReference) {
  cuda::Blas& blas = gpu_exec().gpu->blas();
  {
    Problem probe({128, 256, 384, Fp8Tile::Row128, Fp8Tile::Block128, false, false}, 200);
    if (!blas.gemm_fp8(probe.params())) {
      EXPECT_TRUE(probe.untouched());
      GTEST_SKIP() << "Blas::gemm_fp8 declined a supported shape: cuBLASLt FP8 block scaling needs an sm_90 GPU "
                      "and cuBLAS >= 12.9, and its heuristic must offer an algorithm; callers fall back to "
                      "fp8_gemm_reference";
    }
  }
  // L = 3 (Block128 scales re-padded to 4 columns), L = 5 with partial 128-row blocks, L = 1, the
  // smallest legal shape, and L = 4 (no padding).
  const int64_t shapes[][3] = {{128, 256, 384}, {260, 200, 640}, {64, 128, 128}, {4, 8, 16}, {384, 128, 512}};
  const std::pair<Fp8Tile, Fp8Tile> tiles[] = {{Fp8Tile::Row128, Fp8Tile::Block128},
                                               {Fp8Tile::Row128, Fp8Tile::Row128},
                                               {Fp8Tile::Block128, Fp8Tile::Row128}};
  uint64_t seed = 300;
  for (const auto& s : shapes)
    for (const auto& [ta, tb] : tiles)
      for (bool c_bf16 : {false, true})
        for (bool accumulate : {false, true}) {
          const Case cs{s[0], s[1], s[2], ta, tb, c_bf16, accumulate};
          SCOPED_TRACE(describe(cs));
          Problem pb(cs, seed += 3);
          ASSERT_TRUE(blas.gemm_fp8(pb.params())) << "gemm_fp8 declined a documented shape";
          EXPECT_TRUE(pb.matches(kCublasRel));
        }
  // The same shape again hits the cached plan; another shape adds one.
  const size_t plans = blas.cached_plans();
  Problem again({128, 256, 384, Fp8Tile::Row128, Fp8Tile::Block128, false, false}, 400);
  ASSERT_TRUE(blas.gemm_fp8(again.params()));
  EXPECT_TRUE(again.matches(kCublasRel));
  EXPECT_EQ(blas.cached_plans(), plans);
}

// What cuBLASLt cannot run comes back false with nothing written, on any GPU.
TEST_F(Fp8GemmCuda, CublasDeclinesWhatItCannotRun) {
  cuda::Blas& blas = gpu_exec().gpu->blas();
  const Case declined[] = {
      {128, 128, 128, Fp8Tile::Block128, Fp8Tile::Block128, false, false},  // both 128 x 128 blocks
      {3, 128, 128, Fp8Tile::Row128, Fp8Tile::Block128, false, false},      // m not a multiple of 4
      {128, 6, 128, Fp8Tile::Row128, Fp8Tile::Row128, false, false},        // n not a multiple of 4
      {128, 12, 128, Fp8Tile::Row128, Fp8Tile::Row128, true, false},        // bf16 C rows of 24 bytes
      {128, 128, 72, Fp8Tile::Row128, Fp8Tile::Block128, false, true},      // k not a multiple of 16
  };
  uint64_t seed = 500;
  for (const Case& cs : declined) {
    SCOPED_TRACE(describe(cs));
    Problem pb(cs, seed += 3);
    EXPECT_FALSE(blas.gemm_fp8(pb.params()));
    EXPECT_TRUE(pb.untouched());
  }
  {  // a misaligned operand: a starts one byte into its buffer
    const Case cs{64, 64, 128, Fp8Tile::Row128, Fp8Tile::Row128, false, false};
    SCOPED_TRACE("a misaligned by one byte");
    Problem pb(cs, 600);
    const Operand wide(64 * 128 + 1, 1, Fp8Tile::Row128, 601);
    cuda::Fp8GemmParams p = pb.params();
    p.a = wide.q_ptr() + 1;
    EXPECT_FALSE(blas.gemm_fp8(p));
    EXPECT_TRUE(pb.untouched());
  }
}

}  // namespace
}  // namespace moelab
