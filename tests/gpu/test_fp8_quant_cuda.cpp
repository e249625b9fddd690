// The FP8 tile quantisation on the GPU against its CPU reference (core/ops/fp8_quant.h): q and
// scales must equal the CPU's bit for bit from the same f32 values (a bf16 x is widened exactly),
// and so must y (a bf16 y: the CPU's f32 y rounded to bf16), for every tiling: Row128 (1 x 128) and
// Block128 (128 x 128), of x or of x^T (transpose), with linear or power-of-two scales. The data are
// wide random values (the magnitude changes by up to 2^80 between 16 x 16 patches, so tiles of every
// shape get different scales) plus special tiles (all zero, a NaN, an infinity, a tiny amax, f32
// subnormals, all -0, an amax whose scale is exactly a power of two), on partial tiles and on more
// tiles or regions than the launch grids hold at once. Guard rows around every output catch stray
// writes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <sstream>

#include "core/ops/fp8_quant.h"
#include "tests/gpu/gpu_harness.h"

namespace moelab {
namespace {

using testing::bf16_round;
using testing::expect_error;
using testing::gpu_exec;
using testing::Guarded;
using testing::rand_uniform;
using testing::randn;
using testing::to_gpu;
using testing::to_host;

constexpr uint8_t kByteGuard = 0xa5;  // fills the guard rows of the e4m3 outputs

// An e4m3 CUDA tensor [N, D] inside a buffer with one guard row before and after it.
struct GuardedFp8 {
  Tensor buffer, view;
  GuardedFp8(int64_t N, int64_t D) {
    Tensor host = Tensor::empty({N + 2, D}, DType::FP8_E4M3);
    std::memset(host.raw(), kByteGuard, host.nbytes());
    buffer = host.to(Device::CUDA);
    view = buffer.slice(1, N + 1);
  }
  bool guards_intact() const {
    const Tensor h = buffer.to(Device::CPU);
    const auto* b = static_cast<const uint8_t*>(h.raw());
    const int64_t row = h.size(1), n = h.numel();
    for (int64_t i = 0; i < row; ++i)
      if (b[i] != kByteGuard || b[n - 1 - i] != kByteGuard) return false;
    return true;
  }
};

// Equal bytes (e4m3) or equal bits / both NaN (f32), with the first difference.
::testing::AssertionResult same_bits(const Tensor& actual_in, const Tensor& expected_in) {
  const Tensor a = actual_in.to(Device::CPU), e = expected_in.to(Device::CPU);
  if (a.numel() != e.numel() || a.dtype() != e.dtype())
    return ::testing::AssertionFailure() << "different tensors: " << a.str() << " vs " << e.str();
  int64_t bad = 0, first = -1;
  for (int64_t i = 0; i < a.numel(); ++i) {
    bool same;
    if (a.dtype() == DType::FP8_E4M3) {
      same = a.data<fp8_e4m3_t>()[i].bits == e.data<fp8_e4m3_t>()[i].bits;
    } else {
      const float x = a.data<float>()[i], y = e.data<float>()[i];
      same = (std::isnan(x) && std::isnan(y)) || std::memcmp(&x, &y, sizeof(float)) == 0;
    }
    if (!same && first < 0) first = i;
    bad += !same;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os << bad << " of " << a.numel() << " elements differ, first at flat index " << first << ": actual ";
  if (a.dtype() == DType::FP8_E4M3)
    os << "0x" << std::hex << int(a.data<fp8_e4m3_t>()[first].bits) << ", expected 0x"
       << int(e.data<fp8_e4m3_t>()[first].bits);
  else
    os << a.data<float>()[first] << ", expected " << e.data<float>()[first];
  return ::testing::AssertionFailure() << os.str();
}

std::string describe(Fp8Quant how) {
  std::ostringstream os;
  os << (how.tile == Fp8Tile::Row128 ? "Row128" : "Block128") << (how.transpose ? " transposed" : "")
     << (how.pow2_scales ? " pow2" : "");
  return os.str();
}

// x [R, C] for quantisation `how`. Built in the layout of the QUANTISED matrix (x, or x^T when
// transposed) so that the special tiles are tiles of that matrix, then transposed back if needed.
// Normal values: randn * 2^(patch exponent in [-40, 40] per 16 x 16 patch) * 2^(element exponent
// in [-20, 0]). Special tiles (in row-major order of the tile grid, where there are 8 tiles or more;
// smaller matrices keep plain data):
//   0 all zero, 1 one NaN, 2 -Inf at its last element, 3 amax < 448 * 2^-126 (the FLT_MIN clamp),
//   4 f32 subnormals and zeros, 5 all -0, 6 amax = 56 (amax / 448 = 2^-3: a power of two as it is).
Tensor test_input(int64_t R, int64_t C, Fp8Quant how, uint64_t seed) {
  const int64_t qr = how.transpose ? C : R, qc = how.transpose ? R : C;  // the quantised matrix's shape
  constexpr int64_t kPatch = 16;
  const int64_t pr = (qr + kPatch - 1) / kPatch, pc = (qc + kPatch - 1) / kPatch;
  Tensor xq = randn({qr, qc}, DType::F32, seed);
  const Tensor patch_exp = rand_uniform({pr, pc}, DType::F32, seed + 1, -40.0f, 40.0f);
  const Tensor elem_exp = rand_uniform({qr, qc}, DType::F32, seed + 2, -20.0f, 0.0f);
  float* p = xq.data<float>();
  for (int64_t r = 0; r < qr; ++r)
    for (int64_t c = 0; c < qc; ++c)
      p[r * qc + c] *= std::exp2(patch_exp.data<float>()[r / kPatch * pc + c / kPatch]) *
                       std::exp2(elem_exp.data<float>()[r * qc + c]);

  const int64_t th = how.tile == Fp8Tile::Row128 ? 1 : kFp8BlockSize;
  const int64_t ntr = (qr + th - 1) / th, ntc = fp8_num_blocks(qc);
  for (int64_t t = 0; t < (ntr * ntc >= 8 ? 7 : 0); ++t) {
    const int64_t r0 = t / ntc * th, r1 = std::min(qr, r0 + th);
    const int64_t c0 = t % ntc * kFp8BlockSize, c1 = std::min(qc, c0 + kFp8BlockSize);
    int64_t idx = 0;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c, ++idx) {
        float& v = p[r * qc + c];
        switch (t) {
          case 0: v = 0.0f; break;
          case 1: if (idx == (r1 - r0) * (c1 - c0) / 2) v = std::nanf(""); break;
          case 2: if (r == r1 - 1 && c == c1 - 1) v = -INFINITY; break;
          case 3: v *= 1e-37f / std::max(std::fabs(v), 1.0f); break;
          case 4: v = (idx % 3 - 1) * 3e-41f * (1 + idx % 7); break;
          case 5: v = -0.0f; break;
          case 6: v = std::max(-55.0f, std::min(55.0f, v)); if (idx == 0) v = -56.0f; break;
          default: break;
        }
      }
  }
  if (!how.transpose) return xq;
  Tensor x = Tensor::empty({R, C}, DType::F32);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) x.data<float>()[r * C + c] = p[c * qc + r];
  return x;
}

void check_against_cpu(int64_t R, int64_t C, DType act, Fp8Quant how, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "x [" << R << ", " << C << "], " << dtype_name(act) << ", " << describe(how));
  const int64_t qr = how.transpose ? C : R, qc = how.transpose ? R : C;
  const Shape s_shape = fp8_scales_shape(qr, qc, how.tile);
  const Tensor x = test_input(R, C, how, seed);
  const Tensor x_ref = act == DType::BF16 ? bf16_round(x) : x;  // the f32 values the GPU sees
  Tensor q_ref = Tensor::empty({qr, qc}, DType::FP8_E4M3), s_ref = Tensor::empty(s_shape, DType::F32);
  Tensor y_ref = Tensor::empty({qr, qc}, DType::F32);
  fp8_quantize(Exec{}, x_ref, q_ref, s_ref, how);
  fp8_dequantize(Exec{}, q_ref, s_ref, y_ref, how.tile);

  GuardedFp8 q(qr, qc);
  Guarded s(s_shape, DType::F32), y({qr, qc}, act);
  fp8_quantize(gpu_exec(), to_gpu(x, act), q.view, s.view, how);
  EXPECT_TRUE(same_bits(q.view, q_ref)) << "q";
  EXPECT_TRUE(same_bits(s.view, s_ref)) << "scales";
  fp8_dequantize(gpu_exec(), q.view, s.view, y.view, how.tile);
  EXPECT_TRUE(same_bits(to_host(y.view), act == DType::BF16 ? bf16_round(y_ref) : y_ref)) << "y";
  EXPECT_TRUE(q.guards_intact());
  EXPECT_TRUE(s.guards_intact());
  EXPECT_TRUE(y.guards_intact());
}

class Fp8QuantCuda : public testing::GpuTest {};

TEST_F(Fp8QuantCuda, Row128MatchesCpuBitForBit) {
  for (bool pow2 : {false, true})
    for (DType act : {DType::F32, DType::BF16}) {
      const Fp8Quant how{Fp8Tile::Row128, false, pow2};
      check_against_cpu(37, 200, act, how, 11);  // a partial block
      check_against_cpu(6, 128, act, how, 12);   // one whole block per row
      check_against_cpu(3, 1, act, how, 13);     // a one-channel block
      check_against_cpu(9, 7168, act, how, 14);  // DeepSeek-V3's hidden size: 56 blocks
    }
}

// x^T's 1 x 128 tiles: 128 rows of one column of x (the weight-gradient GEMM's operands).
TEST_F(Fp8QuantCuda, Row128TransposedMatchesCpuBitForBit) {
  for (bool pow2 : {false, true})
    for (DType act : {DType::F32, DType::BF16}) {
      const Fp8Quant how{Fp8Tile::Row128, true, pow2};
      check_against_cpu(200, 37, act, how, 21);   // partial 128-row regions, 37 columns
      check_against_cpu(300, 130, act, how, 22);  // 3 x 2 regions, both partial at the edge
      check_against_cpu(256, 128, act, how, 23);  // whole regions
      check_against_cpu(1, 3, act, how, 24);      // one-row tiles
    }
}

TEST_F(Fp8QuantCuda, Block128MatchesCpuBitForBit) {
  for (bool pow2 : {false, true})
    for (DType act : {DType::F32, DType::BF16}) {
      const Fp8Quant how{Fp8Tile::Block128, false, pow2};
      check_against_cpu(300, 450, act, how, 31);  // 3 x 4 blocks, partial in both dims
      check_against_cpu(896, 1024, act, how, 32);  // 7 x 8 whole blocks
      check_against_cpu(128, 128, act, how, 33);  // one block
      check_against_cpu(130, 1, act, how, 34);    // a one-column matrix: 2 x 1 blocks
      check_against_cpu(1, 1, act, how, 35);
    }
}

// x^T's 128 x 128 blocks (the input-gradient GEMM's weights): the same values as x's blocks, stored
// transposed, with the scales of the blocks of x^T.
TEST_F(Fp8QuantCuda, Block128TransposedMatchesCpuBitForBit) {
  for (bool pow2 : {false, true})
    for (DType act : {DType::F32, DType::BF16}) {
      const Fp8Quant how{Fp8Tile::Block128, true, pow2};
      check_against_cpu(450, 300, act, how, 41);  // x^T [300, 450]: 3 x 4 blocks
      check_against_cpu(5, 200, act, how, 42);    // x^T [200, 5]: 2 x 1 partial blocks
      check_against_cpu(1024, 896, act, how, 43);
    }
}

// A Block128 tile with one NaN (or infinity) anywhere: the whole 128 x 128 tile is poisoned (scale NaN
// or +Inf, every q 0x7f), its neighbours are not.
TEST_F(Fp8QuantCuda, Block128NanAndInfPoisonTheirWholeTile) {
  for (bool transpose : {false, true}) {
    SCOPED_TRACE(transpose ? "transposed" : "not transposed");
    const int64_t R = 256, C = 384;
    Tensor x = randn({R, C}, DType::F32, 51);
    x.data<float>()[200 * C + 5] = std::nanf("");  // x's block (1, 0)
    x.data<float>()[17 * C + 300] = INFINITY;      // x's block (0, 2)
    const Fp8Quant how{Fp8Tile::Block128, transpose, false};
    const int64_t qr = transpose ? C : R, qc = transpose ? R : C;
    GuardedFp8 q(qr, qc);
    Guarded s(fp8_scales_shape(qr, qc, how.tile), DType::F32);
    fp8_quantize(gpu_exec(), to_gpu(x, DType::F32), q.view, s.view, how);
    const Tensor qh = q.view.to(Device::CPU), sh = s.host_f32();
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) {
        const bool nan_block = r / 128 == 1 && c / 128 == 0, inf_block = r / 128 == 0 && c / 128 == 2;
        const uint8_t b = qh.data<fp8_e4m3_t>()[transpose ? c * R + r : r * C + c].bits;
        ASSERT_EQ(b == 0x7f, nan_block || inf_block) << "x[" << r << ", " << c << "]";
      }
    const int64_t sc = sh.size(1);
    auto scale = [&](int64_t rb, int64_t cb) { return sh.data<float>()[transpose ? cb * sc + rb : rb * sc + cb]; };
    EXPECT_TRUE(std::isnan(scale(1, 0)));
    EXPECT_EQ(scale(0, 2), INFINITY);
    EXPECT_TRUE(std::isfinite(scale(0, 0)) && std::isfinite(scale(0, 1)) && std::isfinite(scale(1, 1)) &&
                std::isfinite(scale(1, 2)));
    EXPECT_TRUE(q.guards_intact());
    EXPECT_TRUE(s.guards_intact());
  }
}

// More tiles or regions than the capped grids hold at once (4096 CUDA blocks): the grid-stride loops.
TEST_F(Fp8QuantCuda, LargeTensorsMatchCpu) {
  check_against_cpu(600, 8192 + 40, DType::F32, {Fp8Tile::Row128, false, false}, 61);
  // 4097 row regions of a narrow x: every region kernel goes round its grid-stride loop.
  check_against_cpu(4097 * 128 - 3, 3, DType::F32, {Fp8Tile::Row128, true, false}, 62);
  check_against_cpu(4097 * 128 - 3, 3, DType::F32, {Fp8Tile::Block128, false, true}, 63);
  check_against_cpu(3, 4097 * 128 - 3, DType::BF16, {Fp8Tile::Block128, true, false}, 64);
}

TEST_F(Fp8QuantCuda, RejectsBadArguments) {
  const Tensor x = to_gpu(randn({3, 200}, DType::F32, 31), DType::F32);
  const Tensor q = Tensor::empty({3, 200}, DType::FP8_E4M3, Device::CUDA);
  const Tensor s = Tensor::empty({3, 2}, DType::F32, Device::CUDA);
  expect_error([&] { fp8_quantize(gpu_exec(), Tensor::empty({3, 200}, DType::F64, Device::CUDA), q, s); },
               "x is f64[3,200]@cuda, expected f32 or bf16 on CUDA");
  expect_error([&] { fp8_quantize(gpu_exec(), x, Tensor::empty({3, 200}, DType::FP8_E4M3), s); },
               "q is on cpu but x is on cuda");
  expect_error([&] { fp8_dequantize(gpu_exec(), q, Tensor::empty({3, 2}, DType::F32), x); },
               "scales is on cpu but y is on cuda");
}

}  // namespace
}  // namespace moelab
