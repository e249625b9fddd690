// Embedding on the GPU against the CPU reference. The forward is a copy and the backward adds the
// same f32 values in the same (token) order as the CPU, so both must match it EXACTLY, for f32 and
// for bf16 tables/gradients (bf16 widens to f32 exactly). Guard rows around out and grad_weight
// catch writes outside them; bad ids must throw the CPU's error without touching memory.
#include <gtest/gtest.h>

#include "core/ops/embedding.h"
#include "tests/gpu/gpu_harness.h"

namespace moelab {
namespace {
using testing::Guarded;
using testing::randn;

struct EmbCase {
  Shape ids;
  int32_t vocab;
  int64_t dim;
  DType act;
};

class EmbeddingCuda : public testing::GpuTest, public ::testing::WithParamInterface<EmbCase> {};

Shape with_dim(const Shape& ids, int64_t dim) {
  std::vector<int64_t> d = ids.dims();
  d.push_back(dim);
  return Shape(d);
}

TEST_P(EmbeddingCuda, MatchesCpuReference) {
  const EmbCase c = GetParam();
  const Shape out_shape = with_dim(c.ids, c.dim);
  Tensor ids = testing::randint(c.ids, c.vocab, 41);
  Tensor w = testing::bf16_round(randn({c.vocab, c.dim}, DType::F32, 42));  // exact in both dtypes
  Tensor gy = randn(out_shape, DType::F32, 43);
  if (c.act == DType::BF16) gy = testing::bf16_round(gy);
  Tensor gw = randn({c.vocab, c.dim}, DType::F32, 44);  // accumulated into: a random start

  Tensor out = Tensor::empty(out_shape, DType::F32), gw_cpu = gw.to(Device::CPU);
  embedding_forward(testing::gpu_exec(), ids, w, out);
  embedding_backward(testing::gpu_exec(), gy, ids, gw_cpu);

  Guarded dout(out_shape, c.act), dgw({c.vocab, c.dim}, DType::F32);
  dgw.view.copy_from(gw.to(Device::CUDA));
  const Tensor dids = ids.to(Device::CUDA);
  embedding_forward(testing::gpu_exec(), dids, testing::to_gpu(w, c.act), dout.view);
  embedding_backward(testing::gpu_exec(), testing::to_gpu(gy, c.act), dids, dgw.view);

  EXPECT_TRUE(testing::close(dout.host_f32(), out, 0.0, 0.0)) << "out (a copy)";
  EXPECT_TRUE(testing::close(dgw.host_f32(), gw_cpu, 0.0, 0.0)) << "grad_weight (same additions in the same order)";
  EXPECT_FALSE(testing::close(gw_cpu, gw, 0.0, 0.0)) << "the backward must have changed grad_weight";
  EXPECT_TRUE(dout.guards_intact() && dgw.guards_intact()) << "write outside the output";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, EmbeddingCuda,
    ::testing::Values(EmbCase{{1}, 1, 1, DType::F32}, EmbCase{{3, 7}, 11, 33, DType::F32},
                      EmbCase{{2, 65}, 5, 200, DType::F32},  // long runs of repeated ids
                      EmbCase{{4, 100}, 1000, 768, DType::F32}, EmbCase{{2, 3, 5}, 7, 129, DType::F32},
                      EmbCase{{3, 7}, 11, 33, DType::BF16}, EmbCase{{2, 65}, 5, 200, DType::BF16},
                      EmbCase{{4, 100}, 1000, 768, DType::BF16}),
    [](const auto& info) { return "case" + std::to_string(info.index); });

using EmbeddingCudaChecks = testing::GpuTest;

TEST_F(EmbeddingCudaChecks, BackwardIsDeterministic) {
  Tensor ids = testing::randint({8, 257}, 17, 51).to(Device::CUDA);  // ~120 tokens per id
  Tensor gy = randn({8, 257, 96}, DType::F32, 52).to(Device::CUDA);
  Tensor a = Tensor::zeros({17, 96}, DType::F32, Device::CUDA), b = Tensor::zeros({17, 96}, DType::F32, Device::CUDA);
  embedding_backward(testing::gpu_exec(), gy, ids, a);
  embedding_backward(testing::gpu_exec(), gy, ids, b);
  EXPECT_TRUE(testing::close(a, b, 0.0, 0.0));
  EXPECT_FALSE(testing::close(a, Tensor::zeros({17, 96}, DType::F32), 0.0, 0.0));
}

TEST_F(EmbeddingCudaChecks, BadIdsThrowTheCpuError) {
  Tensor ids = testing::randint({2, 6}, 9, 61);
  ids.data<int32_t>()[9] = 9;   // == V
  ids.data<int32_t>()[7] = -3;  // the first bad one
  const Tensor dids = ids.to(Device::CUDA);
  Guarded out({2, 6, 4}, DType::F32), gw({9, 4}, DType::F32);
  const Tensor w = randn({9, 4}, DType::F32, 62).to(Device::CUDA);
  testing::expect_error([&] { embedding_forward(testing::gpu_exec(), dids, w, out.view); },
                        "embedding_forward: ids i32[2,6]@cuda holds -3 at flat position 7, expected a token id in [0, V=9)");
  testing::expect_error(
      [&] {
        embedding_backward(testing::gpu_exec(), randn({2, 6, 4}, DType::F32, 63).to(Device::CUDA), dids, gw.view);
      },
      "embedding_backward: ids i32[2,6]@cuda holds -3 at flat position 7");
  EXPECT_TRUE(out.guards_intact() && gw.guards_intact());
  // Only the id == V: found too.
  ids.data<int32_t>()[7] = 0;
  testing::expect_error([&] { embedding_forward(testing::gpu_exec(), ids.to(Device::CUDA), w, out.view); },
                        "holds 9 at flat position 9");
  // After an error the op works again (the flag is reset at every call).
  ids.data<int32_t>()[9] = 8;
  embedding_forward(testing::gpu_exec(), ids.to(Device::CUDA), w, out.view);
}

TEST_F(EmbeddingCudaChecks, DtypeErrors) {
  const Tensor ids = testing::randint({5}, 3, 71).to(Device::CUDA);
  const Tensor w = randn({3, 8}, DType::F32, 72).to(Device::CUDA);
  testing::expect_error(
      [&] {
        embedding_forward(testing::gpu_exec(), ids, w, Tensor::empty({5, 8}, DType::BF16, Device::CUDA));
      },
      "embedding_forward");
  testing::expect_error(
      [&] {
        embedding_forward(testing::gpu_exec(), ids, w.to(Device::CPU).to(DType::F64).to(Device::CUDA),
                          Tensor::empty({5, 8}, DType::F64, Device::CUDA));
      },
      "expected f32 or bf16 on CUDA");
  testing::expect_error(
      [&] {
        embedding_backward(testing::gpu_exec(), Tensor::zeros({5, 8}, DType::F32, Device::CUDA), ids,
                           Tensor::zeros({3, 8}, DType::BF16, Device::CUDA));
      },
      "embedding_backward");
}

}  // namespace
}  // namespace moelab
