// Gradient checks in double for the attention layers: MLA with and without query compression,
// MHA with full and partial RoPE, GQA, MQA; and partial RoPE's angles by hand.
#include <gtest/gtest.h>

#include <cmath>

#include "core/nn/gqa.h"
#include "core/nn/mla.h"
#include "core/rng.h"
#include "tests/nn/nn_harness.h"

namespace moelab {
namespace {
using testing::randn;

// Runs the layer's gradient check on x: [B*T, D] with loss dot(y, G).
template <typename Layer>
void check_layer(const ModelConfig& cfg, int64_t B, int64_t T) {
  cfg.validate();
  ParamBuffer params;
  Layer layer(params, "model.layers.0.self_attn", cfg);
  params.allocate(Device::CPU, DType::F64);
  params.initialize(11);
  // Norm weights away from 1, so that ignoring one shows.
  for (const auto& e : params.entries())
    if (e.spec.init == Init::Ones) fill_normal(params.param(e.spec.name), 12, 0, 1.0, 0.2);
  Arena arena(8 << 20, Device::CPU);
  Context ctx{&arena, DType::F64, B, T};
  const int64_t D = cfg.hidden_size;
  Tensor x = randn({B * T, D}, DType::F64, 13), gy = randn({B * T, D}, DType::F64, 14);
  Tensor gx = randn({B * T, D}, DType::F64, 15);
  auto run = [&](bool do_backward) {
    arena.reset();
    typename Layer::Saved s;
    Tensor y = ctx.alloc({B * T, D});
    layer.forward(ctx, x, y, s);
    if (do_backward) layer.backward(ctx, s, gy, gx);
    return testing::dot(y, gy);
  };
  EXPECT_TRUE(testing::check_param_grads(params, [&] { return run(false); }, [&] { run(true); }));
  EXPECT_TRUE(testing::check_grad(x, gx, [&] { return run(false); }));
}

ModelConfig mla_config(int64_t q_lora_rank) {
  ModelConfig c;
  c.attention = AttentionKind::MLA;
  c.hidden_size = 10;
  c.num_attention_heads = 3;
  c.q_lora_rank = q_lora_rank;
  c.kv_lora_rank = 7;
  c.qk_nope_head_dim = 5;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 3;
  c.initializer_range = 0.4;
  return c;
}

TEST(Attention, MLAGradCheckWithQueryCompression) { check_layer<MLAttention>(mla_config(6), 2, 5); }
TEST(Attention, MLAGradCheckWithoutQueryCompression) { check_layer<MLAttention>(mla_config(0), 1, 6); }
TEST(Attention, MLAGradCheckOneTokenOneHead) {
  ModelConfig c = mla_config(5);
  c.num_attention_heads = 1;
  check_layer<MLAttention>(c, 2, 1);
}

ModelConfig mha_config(AttentionKind kind, int64_t heads, int64_t kv_heads, double rotary) {
  ModelConfig c;
  c.attention = kind;
  c.hidden_size = 12;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv_heads;
  c.partial_rotary_factor = rotary;
  c.initializer_range = 0.4;
  return c;
}

TEST(Attention, MHAGradCheckFullRope) { check_layer<GQAttention>(mha_config(AttentionKind::MHA, 3, 3, 1.0), 2, 5); }
TEST(Attention, MHAGradCheckPartialRope) { check_layer<GQAttention>(mha_config(AttentionKind::MHA, 2, 2, 0.5), 1, 7); }
TEST(Attention, GQAGradCheck) { check_layer<GQAttention>(mha_config(AttentionKind::GQA, 4, 2, 1.0), 2, 4); }
TEST(Attention, MQAGradCheck) { check_layer<GQAttention>(mha_config(AttentionKind::GQA, 4, 1, 0.34), 1, 5); }

// Partial RoPE (partial_rotary_factor 0.5, head_dim 8): only the LAST 4 dims of each head turn, and
// their angles use the rotated width R = 4, as HF's inv_freq does: at position p pair i turns by
// p x theta^(-2i/R). With q_proj the identity, the saved query is the input turned.
TEST(Attention, PartialRopeTurnsTheTailByHand) {
  ModelConfig c = mha_config(AttentionKind::MHA, 1, 1, 0.5);
  c.hidden_size = 8;
  c.rope_theta = 100.0;
  ASSERT_EQ(c.mha_rope_dim(), 4);
  ParamBuffer params;
  GQAttention layer(params, "model.layers.0.self_attn", c);
  params.allocate(Device::CPU, DType::F64);
  params.initialize(3);
  Tensor wq = params.param("model.layers.0.self_attn.q_proj.weight");  // [8, 8]
  wq.zero();
  for (int64_t i = 0; i < 8; ++i) wq.data<double>()[i * 8 + i] = 1;
  Arena arena(1 << 20, Device::CPU);
  Context ctx{&arena, DType::F64, 1, 3};
  Tensor x = Tensor::empty({3, 8}, DType::F64);
  for (int64_t i = 0; i < 24; ++i) x.data<double>()[i] = static_cast<double>(i % 8 + 1);  // (1, ..., 8) per token
  GQAttention::Saved s;
  layer.forward(ctx, x, ctx.alloc({3, 8}), s);
  const double* q = s.q.data<double>() + 2 * 8;  // position 2
  for (int d = 0; d < 4; ++d) EXPECT_EQ(q[d], d + 1) << "dim " << d << " is outside the rotated tail";
  const double a0 = 2.0, a1 = 2.0 * std::pow(100.0, -2.0 / 4);  // 2 and 0.2 rad
  EXPECT_NEAR(q[4], 5 * std::cos(a0) - 6 * std::sin(a0), 1e-14);
  EXPECT_NEAR(q[5], 5 * std::sin(a0) + 6 * std::cos(a0), 1e-14);
  EXPECT_NEAR(q[6], 7 * std::cos(a1) - 8 * std::sin(a1), 1e-14);
  EXPECT_NEAR(q[7], 7 * std::sin(a1) + 8 * std::cos(a1), 1e-14);
}

}  // namespace
}  // namespace moelab
