// The FP8 1x128-tile quantisation on the GPU against its CPU reference (core/ops/fp8_quant.h): q and
// scales must equal the CPU's bit for bit from the same f32 values (a bf16 x is widened exactly),
// and so must y (a bf16 y: the CPU's f32 y rounded to bf16), on wide random data with the special
// blocks (all zero, -0, partial, tiny amax, f32 subnormals, NaN, Inf) and with more tiles than the
// launch grid holds at once. Guard rows around every output catch stray writes.
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

// Normal values varying by 2^+-40 per block and 2^-20 per element; then, where there are rows
// enough, the special blocks of core/ops/fp8_quant.h.
Tensor test_input(int64_t N, int64_t D, uint64_t seed) {
  const int64_t nb = fp8_num_blocks(D);
  Tensor x = randn({N, D}, DType::F32, seed);
  const Tensor block_exp = rand_uniform({N, nb}, DType::F32, seed + 1, -40.0f, 40.0f);
  const Tensor elem_exp = rand_uniform({N, D}, DType::F32, seed + 2, -20.0f, 0.0f);
  float* p = x.data<float>();
  for (int64_t i = 0; i < N * D; ++i)
    p[i] *= std::exp2(block_exp.data<float>()[i / D * nb + i % D / kFp8BlockSize]) * std::exp2(elem_exp.data<float>()[i]);
  if (N < 6) return x;
  for (int64_t d = 0; d < std::min<int64_t>(D, kFp8BlockSize); ++d) p[d] = 0.0f;  // row 0: a zero block
  p[D + D / 2] = std::nanf("");                                                     // row 1: NaN
  p[3 * D - 1] = -INFINITY;                                                         // row 2: -Inf (last block)
  for (int64_t d = 0; d < D; ++d) {
    p[3 * D + d] *= 1e-37f / std::max(std::fabs(p[3 * D + d]), 1.0f);  // row 3: amax < 448 * 2^-126
    p[4 * D + d] = (d % 3 - 1) * 3e-41f * (1 + d % 7);                 // row 4: f32 subnormals and zeros
    p[5 * D + d] = -0.0f;                                              // row 5: all -0
  }
  return x;
}

void check_against_cpu(int64_t N, int64_t D, DType act, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "N " << N << ", D " << D << ", " << dtype_name(act));
  const int64_t nb = fp8_num_blocks(D);
  const Tensor x = test_input(N, D, seed);
  const Tensor x_ref = act == DType::BF16 ? bf16_round(x) : x;  // the f32 values the GPU sees
  Tensor q_ref = Tensor::empty({N, D}, DType::FP8_E4M3), s_ref = Tensor::empty({N, nb}, DType::F32);
  Tensor y_ref = Tensor::empty({N, D}, DType::F32);
  fp8_quantize(Exec{}, x_ref, q_ref, s_ref);
  fp8_dequantize(Exec{}, q_ref, s_ref, y_ref);

  GuardedFp8 q(N, D);
  Guarded s({N, nb}, DType::F32), y({N, D}, act);
  fp8_quantize(gpu_exec(), to_gpu(x, act), q.view, s.view);
  EXPECT_TRUE(same_bits(q.view, q_ref)) << "q";
  EXPECT_TRUE(same_bits(s.view, s_ref)) << "scales";
  fp8_dequantize(gpu_exec(), q.view, s.view, y.view);
  EXPECT_TRUE(same_bits(to_host(y.view), act == DType::BF16 ? bf16_round(y_ref) : y_ref)) << "y";
  EXPECT_TRUE(q.guards_intact());
  EXPECT_TRUE(s.guards_intact());
  EXPECT_TRUE(y.guards_intact());
}

class Fp8QuantCuda : public testing::GpuTest {};

TEST_F(Fp8QuantCuda, MatchesCpuBitForBit) {
  for (DType act : {DType::F32, DType::BF16}) {
    check_against_cpu(37, 200, act, 11);  // a partial block
    check_against_cpu(6, 128, act, 12);   // one whole block
    check_against_cpu(3, 1, act, 13);     // a one-channel block
    check_against_cpu(9, 7168, act, 14);  // DeepSeek-V3's hidden size: 56 blocks
  }
}

// More (row, block) tiles and elements than the capped grids hold at once: the grid-stride loops.
TEST_F(Fp8QuantCuda, LargeTensorMatchesCpu) {
  check_against_cpu(600, 8192 + 40, DType::F32, 21);
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
