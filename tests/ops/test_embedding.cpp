// Embedding: finite-difference gradient checks in double (repeated ids included), the accumulate
// contract, repeated ids adding up, determinism across thread counts, and id / argument errors.
#include <gtest/gtest.h>
#include <omp.h>

#include <string>
#include <vector>

#include "core/ops/embedding.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::check_grad;
using testing::randn;

Shape with_dim(const Shape& s, int64_t d) {
  std::vector<int64_t> dims = s.dims();
  dims.push_back(d);
  return Shape(dims);
}

// grad_weight is accumulated: pre-filled with random values, the ADDED part is checked against
// central differences of L = <out, G>. ids come from randint over a small V, so ids repeat; the
// first two are also forced equal.
void check_embedding_grads(const Shape& ids_shape, int32_t vocab, int64_t dim) {
  Tensor ids = testing::randint(ids_shape, vocab, 1);
  if (ids.numel() > 1) ids.data<int32_t>()[1] = ids.data<int32_t>()[0];
  const Shape outs = with_dim(ids_shape, dim);
  Tensor w = randn({vocab, dim}, DType::F64, 2), g = randn(outs, DType::F64, 3), out = Tensor::empty(outs, DType::F64);
  auto loss = [&] {
    embedding_forward(Exec{}, ids, w, out);
    return testing::dot(out, g);
  };
  Tensor gw0 = randn({vocab, dim}, DType::F64, 4), gw = gw0.to(Device::CPU);
  embedding_backward(Exec{}, g, ids, gw);
  Tensor gw_added = Tensor::empty({vocab, dim}, DType::F64);
  for (int64_t i = 0; i < gw.numel(); ++i) gw_added.data<double>()[i] = gw.data<double>()[i] - gw0.data<double>()[i];
  EXPECT_TRUE(check_grad(w, gw_added, loss)) << "ids " << ids_shape.str() << ", V " << vocab << ", D " << dim;
}

TEST(Embedding, GradCheckOneToken) { check_embedding_grads({1, 1}, 4, 9); }     // B = T = 1
TEST(Embedding, GradCheckOddShapes) { check_embedding_grads({7}, 5, 3); }       // more tokens than V
TEST(Embedding, GradCheckBatch) { check_embedding_grads({2, 3}, 11, 13); }      // ids [B, T]
TEST(Embedding, GradCheckWideRows) { check_embedding_grads({3, 1, 5}, 6, 70); }  // D > one 64-column block

TEST(Embedding, ForwardGathersRows) {
  Tensor w = randn({5, 3}, DType::F32, 11), out = Tensor::empty({2, 2, 3}, DType::F32);
  Tensor ids = Tensor::empty({2, 2}, DType::I32);
  const int32_t id_values[4] = {4, 0, 4, 2};
  for (int i = 0; i < 4; ++i) ids.data<int32_t>()[i] = id_values[i];
  embedding_forward(Exec{}, ids, w, out);
  for (int n = 0; n < 4; ++n)
    for (int d = 0; d < 3; ++d)
      EXPECT_EQ(out.data<float>()[n * 3 + d], w.data<float>()[id_values[n] * 3 + d]) << "token " << n << " dim " << d;
}

TEST(Embedding, RepeatedIdsAddUp) {
  Tensor ids = Tensor::empty({3}, DType::I32);
  ids.data<int32_t>()[0] = 3;
  ids.data<int32_t>()[1] = 3;
  ids.data<int32_t>()[2] = 1;
  Tensor g = randn({3, 2}, DType::F64, 12), gw0 = randn({4, 2}, DType::F64, 13), gw = gw0.to(Device::CPU);
  embedding_backward(Exec{}, g, ids, gw);
  const double* pg = g.data<double>();
  for (int d = 0; d < 2; ++d) {
    EXPECT_DOUBLE_EQ(gw.data<double>()[3 * 2 + d], gw0.data<double>()[3 * 2 + d] + pg[0 * 2 + d] + pg[1 * 2 + d]);
    EXPECT_DOUBLE_EQ(gw.data<double>()[1 * 2 + d], gw0.data<double>()[1 * 2 + d] + pg[2 * 2 + d]);
    EXPECT_EQ(gw.data<double>()[0 * 2 + d], gw0.data<double>()[0 * 2 + d]) << "row 0 has no token";
    EXPECT_EQ(gw.data<double>()[2 * 2 + d], gw0.data<double>()[2 * 2 + d]) << "row 2 has no token";
  }
}

TEST(Embedding, FloatMatchesDouble) {
  Tensor ids = testing::randint({4, 9}, 17, 21);
  Tensor w = randn({17, 33}, DType::F64, 22), g = randn({4, 9, 33}, DType::F64, 23);
  Tensor out64 = Tensor::empty({4, 9, 33}, DType::F64), out32 = Tensor::empty({4, 9, 33}, DType::F32);
  embedding_forward(Exec{}, ids, w, out64);
  embedding_forward(Exec{}, ids, w.to(DType::F32), out32);
  EXPECT_TRUE(testing::close(out32, out64, 1e-7, 1e-7));  // a gather: only the f32 rounding of w
  Tensor gw64 = Tensor::zeros({17, 33}, DType::F64), gw32 = Tensor::zeros({17, 33}, DType::F32);
  embedding_backward(Exec{}, g, ids, gw64);
  embedding_backward(Exec{}, g.to(DType::F32), ids, gw32);
  EXPECT_TRUE(testing::close(gw32, gw64, 1e-5, 1e-5));
}

TEST(Embedding, BackwardIsDeterministicAcrossThreadCounts) {
  // Many tokens over few ids: f32 sums whose value depends on the order of the additions.
  Tensor ids = testing::randint({8, 300}, 7, 31);
  Tensor g = randn({8, 300, 200}, DType::F32, 32);
  const int threads = omp_get_max_threads();
  Tensor gw1 = randn({7, 200}, DType::F32, 33), gw4 = gw1.to(Device::CPU);
  omp_set_num_threads(1);
  embedding_backward(Exec{}, g, ids, gw1);
  omp_set_num_threads(4);
  embedding_backward(Exec{}, g, ids, gw4);
  omp_set_num_threads(threads);
  EXPECT_TRUE(testing::close(gw4, gw1, 0, 0)) << "bits differ between 1 and 4 threads";
}

TEST(Embedding, BadIdNamesIdPositionAndVocab) {
  Tensor ids = Tensor::empty({2, 3}, DType::I32);
  for (int i = 0; i < 6; ++i) ids.data<int32_t>()[i] = i % 4;
  ids.data<int32_t>()[4] = 9;
  Tensor w = randn({4, 3}, DType::F32, 41), out = Tensor::empty({2, 3, 3}, DType::F32);
  try {
    embedding_forward(Exec{}, ids, w, out);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds 9 at flat position 4, expected a token id in [0, V=4)"), std::string::npos)
        << e.what();
  }
  ids.data<int32_t>()[4] = -1;
  try {
    embedding_backward(Exec{}, out, ids, w);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds -1 at flat position 4"), std::string::npos) << e.what();
  }
}

TEST(Embedding, ArgumentErrorsNameTheTensor) {
  Tensor ids = Tensor::zeros({2, 3}, DType::I32), w = Tensor::zeros({4, 5}, DType::F32);
  Tensor out_bad = Tensor::zeros({2, 3, 4}, DType::F32);
  try {
    embedding_forward(Exec{}, ids, w, out_bad);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out is f32[2,3,4]@cpu, expected shape [2,3,5]"), std::string::npos) << e.what();
  }
  Tensor out = Tensor::zeros({2, 3, 5}, DType::F32);
  try {
    embedding_forward(Exec{}, ids.to(DType::F32), w, out);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ids is f32[2,3]@cpu, expected dtype i32"), std::string::npos) << e.what();
  }
  EXPECT_THROW(embedding_forward(Exec{}, ids, w, out.to(DType::F64)), Error);       // mixed f32/f64
  EXPECT_THROW(embedding_backward(Exec{}, out, ids, Tensor::zeros({4}, DType::F32)), Error);  // grad_weight not [V, D]
}

}  // namespace
}  // namespace moelab
