// The flat parameter buffer and the activation arena.
#include <gtest/gtest.h>

#include <cmath>

#include "core/arena.h"
#include "core/params.h"
#include "core/rng.h"

namespace moelab {
namespace {

ParamBuffer make_buffer() {
  ParamBuffer pb;
  pb.declare({"model.embed_tokens.weight", {11, 6}, Init::Normal, 0.02f, false});
  pb.declare({"model.layers.0.input_layernorm.weight", {6}, Init::Ones, 0.0f, false});
  pb.declare({"model.layers.0.mlp.gate_proj.weight", {5, 6}, Init::Normal, 0.5f, true});
  pb.declare({"model.layers.0.bias", {3}, Init::Zeros, 0.0f, false});
  return pb;
}

TEST(ParamBuffer, LayoutIsAlignedAndViewsShareTheFlatBuffers) {
  ParamBuffer pb = make_buffer();
  pb.allocate(Device::CPU);
  EXPECT_EQ(pb.numel(), 66 + 6 + 30 + 3);
  for (const auto& e : pb.entries()) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(pb.param(e.spec.name).raw()) % 256, 0u) << e.spec.name;
    EXPECT_EQ(pb.param(e.spec.name).storage(), pb.flat_params().storage());
    EXPECT_EQ(pb.grad(e.spec.name).storage(), pb.flat_grads().storage());
    EXPECT_EQ(pb.param(e.spec.name).shape(), e.spec.shape);
  }
  // A write through a gradient view lands at the same offset as its parameter.
  pb.grad("model.layers.0.mlp.gate_proj.weight").data<float>()[7] = 3.0f;
  const auto& e = pb.entries()[2];
  EXPECT_EQ(pb.flat_grads().data<float>()[e.offset + 7], 3.0f);
}

TEST(ParamBuffer, InitialisationFollowsTheSpecAndTheStream) {
  ParamBuffer pb = make_buffer();
  pb.allocate(Device::CPU);
  pb.initialize(1234);
  Tensor norm = pb.param("model.layers.0.input_layernorm.weight");
  for (int i = 0; i < 6; ++i) EXPECT_EQ(norm.data<float>()[i], 1.0f);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(pb.param("model.layers.0.bias").data<float>()[i], 0.0f);
  // gate_proj draws from the stream at its own offset with its own std.
  const auto& gate = pb.entries()[2];
  Tensor expected = Tensor::empty({5, 6}, DType::F32);
  fill_normal(expected, 1234, static_cast<uint64_t>(gate.offset), 0.0, 0.5);
  for (int i = 0; i < 30; ++i) EXPECT_EQ(pb.param(gate.spec.name).data<float>()[i], expected.data<float>()[i]);
  // The padding stays zero, so a norm over the flat buffer is the norm over the parameters.
  double sum_sq = 0, flat_sq = 0;
  for (const auto& en : pb.entries())
    for (int64_t i = 0; i < en.spec.shape.numel(); ++i) sum_sq += std::pow(pb.param(en.spec.name).data<float>()[i], 2);
  for (int64_t i = 0; i < pb.numel_padded(); ++i) flat_sq += std::pow(pb.flat_params().data<float>()[i], 2);
  EXPECT_DOUBLE_EQ(sum_sq, flat_sq);
}

// Mixed precision: the bf16 compute copy holds every parameter rounded to nearest even, at the same
// offsets, and follows the master through initialize() and sync_compute_copy().
TEST(ParamBuffer, ComputeCopyIsTheRoundedMaster) {
  ParamBuffer pb = make_buffer();
  pb.allocate(Device::CPU);
  EXPECT_FALSE(pb.has_compute_copy());
  EXPECT_EQ(pb.compute(2).raw(), pb.param(2).raw());  // without a copy, compute() is the master
  EXPECT_THROW(pb.add_compute_copy(DType::F32), Error);
  pb.add_compute_copy(DType::BF16);
  EXPECT_THROW(pb.add_compute_copy(DType::BF16), Error);
  pb.initialize(77);
  auto expect_rounded = [&] {
    for (size_t i = 0; i < pb.entries().size(); ++i) {
      const Tensor master = pb.param(i), copy = pb.compute(i);
      ASSERT_EQ(copy.dtype(), DType::BF16);
      ASSERT_EQ(copy.shape(), master.shape());
      const Tensor expected = master.to(DType::BF16);
      for (int64_t j = 0; j < master.numel(); ++j)
        ASSERT_EQ(copy.data<bf16_t>()[j].bits, expected.data<bf16_t>()[j].bits) << pb.entries()[i].spec.name << " [" << j << "]";
    }
  };
  expect_rounded();
  EXPECT_NE(pb.param(0).data<float>()[0], 0.0f);
  // Something else writes the master (a checkpoint load): the copy follows after a sync.
  fill_normal(pb.param(2), 5, 0, 0.0, 3.0);
  pb.sync_compute_copy();
  expect_rounded();
}

TEST(ParamBuffer, MisuseIsAClearError) {
  ParamBuffer pb = make_buffer();
  EXPECT_THROW(pb.declare({"model.embed_tokens.weight", {2}, Init::Zeros, 0.0f, false}), Error);
  EXPECT_THROW(pb.declare({"x", {0, 3}, Init::Zeros, 0.0f, false}), Error);
  EXPECT_THROW(pb.param("model.embed_tokens.weight"), Error);  // before allocate
  pb.allocate(Device::CPU);
  try {
    pb.param("model.embed_token.weight");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no parameter named 'model.embed_token.weight'"), std::string::npos);
  }
  EXPECT_THROW(pb.declare({"late", {2}, Init::Zeros, 0.0f, false}), Error);
}

TEST(Arena, BumpAllocatesAlignedViewsAndResets) {
  Arena arena(4096, Device::CPU);
  Tensor a = arena.alloc({3, 5}, DType::F32);
  Tensor b = arena.alloc({7}, DType::BF16);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.raw()) - reinterpret_cast<uintptr_t>(a.raw()), 256u);
  EXPECT_EQ(arena.used(), 256u + 14u);
  arena.reset();
  EXPECT_EQ(arena.used(), 0u);
  EXPECT_EQ(arena.peak(), 270u);
  Tensor c = arena.alloc({4}, DType::F32);
  EXPECT_EQ(c.raw(), a.raw());  // the same memory, step after step
}

TEST(Arena, OverflowNamesTheRequest) {
  Arena arena(1024, Device::CPU);
  arena.alloc({200}, DType::F32);
  try {
    arena.alloc({100}, DType::F32);
    FAIL();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("f32[100] needs 400 bytes, 800 of 1024"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace moelab
