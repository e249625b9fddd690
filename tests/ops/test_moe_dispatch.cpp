// MoE dispatch ops (core/ops/moe_dispatch.h) on the CPU, called directly: the layout groups rows by
// expert in token order, the dispatch puts each token's row where pos says, and bad layouts are
// refused. Dispatch/combine inside the layer (naive vs grouped experts, gradients) are checked in
// tests/nn/test_moe.cpp, and on the GPU against this reference in tests/gpu/test_moe_ops_cuda.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "core/ops/moe_dispatch.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::i32_tensor;
using testing::randn;

// Rows grouped by expert, in token order within an expert; -1 (dropped) gets no row.
TEST(MoeDispatch, LayoutGroupsByExpert) {
  const Tensor topk_idx = i32_tensor({3, 2}, {2, 0, 0, -1, 1, 2});
  Tensor pos = Tensor::empty({3, 2}, DType::I32);
  EXPECT_EQ(moe_dispatch_layout(Exec{}, topk_idx, 3, pos), (std::vector<int64_t>{2, 1, 2}));
  EXPECT_EQ(std::vector<int32_t>(pos.data<int32_t>(), pos.data<int32_t>() + 6),
            (std::vector<int32_t>{3, 0, 1, -1, 2, 4}));
  // The rows land where pos says; a combine with weights 1 sums each token's kept rows.
  Tensor x = randn({3, 2}, DType::F64, 161), expert_x = Tensor::empty({5, 2}, DType::F64);
  moe_dispatch_forward(Exec{}, x, pos, expert_x);
  const int src[5] = {0, 1, 2, 0, 2};  // the token of each expert row
  for (int r = 0; r < 5; ++r)
    for (int d = 0; d < 2; ++d) EXPECT_EQ(expert_x.data<double>()[r * 2 + d], x.data<double>()[src[r] * 2 + d]);
}

TEST(MoeDispatch, RejectsBadArguments) {
  Tensor scores = randn({2, 4}, DType::F64, 171);
  Tensor pos = Tensor::empty({2, 2}, DType::I32);
  EXPECT_THROW(moe_dispatch_layout(Exec{}, i32_tensor({2, 2}, {0, 1, -2, 2}), 4, pos), Error);            // -2
  Tensor expert_x = Tensor::empty({3, 4}, DType::F64);
  EXPECT_THROW(moe_dispatch_forward(Exec{}, scores, i32_tensor({2, 2}, {0, 1, 1, 2}), expert_x), Error);  // row 1 twice
  // row 2 unset
  EXPECT_THROW(moe_dispatch_forward(Exec{}, scores, i32_tensor({2, 2}, {0, 1, -1, -1}), expert_x), Error);
}

}  // namespace
}  // namespace moelab
