// MoE routing ops (core/ops/moe_route.h) on the CPU, called directly: the capacity formula and the
// argument errors of routing, gates and capacity drops. The routing decisions themselves (top-K,
// groups, ties, gates, drops) are checked through the MoE layer against plain loops in
// tests/nn/test_moe.cpp, and on the GPU against this reference in tests/gpu/test_moe_ops_cuda.cpp.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "core/ops/moe_route.h"
#include "tests/harness.h"

namespace moelab {
namespace {
using testing::i32_tensor;
using testing::randn;

TEST(MoeRoute, CapacityFormula) {
  EXPECT_EQ(moe_capacity(1.25, 8, 2, 4), 5);   // exactly 5.0
  EXPECT_EQ(moe_capacity(1.0, 10, 2, 8), 3);   // 2.5 -> 3
  EXPECT_EQ(moe_capacity(0.3, 10, 2, 8), 1);   // 0.75 -> 1
  EXPECT_THROW(moe_capacity(0.0, 10, 2, 8), Error);
}

TEST(MoeRoute, RejectsBadArguments) {
  Tensor scores = randn({2, 4}, DType::F64, 171), w = Tensor::empty({2, 2}, DType::F64);
  Tensor idx = Tensor::empty({2, 2}, DType::I32), pos = Tensor::empty({2, 2}, DType::I32);
  EXPECT_THROW(moe_route_topk(Exec{}, scores, Tensor(), 3, 1, idx), Error);   // 3 groups do not divide E = 4
  EXPECT_THROW(moe_route_topk(Exec{}, scores, Tensor(), 2, 3, idx), Error);   // topk_group > n_group
  EXPECT_THROW(moe_route_topk(Exec{}, scores, Tensor::empty({3}, DType::F64), 1, 1, idx), Error);  // bias [3]
  EXPECT_THROW(moe_gate_forward(Exec{}, scores, i32_tensor({2, 2}, {0, 4, 1, 2}), true, 1.0, w), Error);  // expert 4
  EXPECT_THROW(moe_capacity_drop(Exec{}, scores, i32_tensor({2, 2}, {0, 1, 5, 2}), 1, pos), Error);       // expert 5
}

}  // namespace
}  // namespace moelab
