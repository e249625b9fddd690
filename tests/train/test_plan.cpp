// `moelab plan`'s cost model (train/plan.h) against hand-computed cases: the routing spread (and
// against the real node-limited router on random scores), the chunk pipeline, the data-parallel
// ring, the expert-parallel bytes, decode's KV cache and weight reads, the hardware files, the
// emulated links, and --sweep's order.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "core/nn/model.h"
#include "core/ops/moe_route.h"
#include "tests/harness.h"
#include "train/config_file.h"
#include "train/plan.h"

namespace moelab {
namespace {

std::string source(const std::string& rel) { return std::string(MOELAB_SOURCE_DIR) + "/" + rel; }

// Round numbers: 100 TFLOP/s bf16 at 50%, 1000 GB/s memory at 100%, links 100 GB/s intra and
// 10 GB/s inter at 100%, latencies 10 us and 20 us, 4 GPUs per node.
HardwareProfile round_machine() {
  HardwareProfile hw;
  hw.name = "round";
  hw.peak_bf16_tflops = 100, hw.peak_fp8_tflops = 200, hw.peak_fp32_tflops = 10;
  hw.memory_gib = 80, hw.memory_gbps = 1000, hw.gpus_per_node = 4;
  hw.intra_gbps = 100, hw.intra_latency_us = 10, hw.inter_gbps = 10, hw.inter_latency_us = 20;
  hw.compute_efficiency = 0.5, hw.attention_efficiency = 0.25, hw.memory_efficiency = 1, hw.link_efficiency = 1;
  hw.validate();
  return hw;
}

TEST(Plan, RouteSpreadByHand) {
  // E = 4 on 2 ranks, K = 2: a given rank is missed only when both picks are the other's 2 experts:
  // 1 - C(2,2)/C(4,2) = 5/6; one node is always reached.
  RouteSpread s = route_spread(4, 2, 2, 1);
  EXPECT_NEAR(s.rank, 5.0 / 6, 1e-12);
  EXPECT_NEAR(s.node, 1.0, 1e-12);
  // E = 8 on 4 ranks in 2 nodes, K = 2, node-limited to 1 of the 2 nodes (groups = nodes): a node is
  // picked with chance 1/2, then the K experts come from its 4: the node is surely reached, a given
  // rank of it unless both picks are the other rank's: 1/2 x (1 - C(2,2)/C(4,2)) = 5/12.
  s = route_spread(8, 2, 4, 2, 2, 1);
  EXPECT_NEAR(s.rank, 5.0 / 12, 1e-12);
  EXPECT_NEAR(s.node, 0.5, 1e-12);
  // Keeping every group is no limit: E = 8, K = 2, 2 nodes: 1 - C(4,2)/C(8,2) = 1 - 6/28.
  EXPECT_NEAR(route_spread(8, 2, 4, 2, 2, 2).node, 1 - 6.0 / 28, 1e-12);
  // A rank holding whole groups: E = 8 on 2 ranks (4 experts = 2 groups of 2 each), 2 of the 4
  // groups kept, K = 2 among their 4 experts. j of the rank's groups are kept with chance 1/6, 4/6,
  // 1/6 (j = 0, 1, 2); with j = 1 it is missed when both picks are the other group's (1/6), with
  // j = 2 never: 4/6 x 5/6 + 1/6 = 13/18.
  EXPECT_NEAR(route_spread(8, 2, 2, 1, 4, 2).rank, 13.0 / 18, 1e-12);
  EXPECT_THROW(route_spread(8, 2, 3, 1), Error);        // 3 ranks do not split 8 experts
  EXPECT_THROW(route_spread(12, 2, 3, 1, 4, 1), Error);  // ranks of 4 experts straddle groups of 3
}

// The uniform-routing model against the real router (moe_route_topk, node-limited by group_topk
// over node groups as the MoE does) on random scores: nodes and ranks a token reaches.
TEST(Plan, RouteSpreadMatchesTheNodeLimitedRouter) {
  const int64_t E = 64, K = 6, R = 8, nodes = 4, rows = 20000;
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  Tensor scores = Tensor::empty({rows, E}, DType::F32);
  for (int64_t i = 0; i < rows * E; ++i) scores.data<float>()[i] = 1 / (1 + std::exp(-normal(gen)));
  for (int64_t M : {0, 1, 2}) {
    Tensor idx = Tensor::empty({rows, K}, DType::I32);
    // Node-limited routing: nodes are the groups, M of them, each scored by its top ceil(K/M).
    const int64_t groups = M > 0 ? nodes : 1, topk_group = M > 0 ? M : 1, group_topk = M > 0 ? (K + M - 1) / M : 0;
    moe_route_topk(Exec{}, scores, Tensor(), groups, topk_group, group_topk, idx);
    double ranks = 0, reached_nodes = 0;
    for (int64_t n = 0; n < rows; ++n) {
      std::vector<bool> rank_hit(R), node_hit(nodes);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t r = idx.data<int32_t>()[n * K + k] / (E / R);
        rank_hit[static_cast<size_t>(r)] = true;
        node_hit[static_cast<size_t>(r / (R / nodes))] = true;
      }
      for (bool h : rank_hit) ranks += h;
      for (bool h : node_hit) reached_nodes += h;
    }
    const RouteSpread s = route_spread(E, K, R, nodes, M > 0 ? nodes : 1, M > 0 ? M : 1);
    EXPECT_NEAR(reached_nodes / rows, nodes * s.node, 0.02 * nodes * s.node) << "M = " << M;
    EXPECT_NEAR(ranks / rows, R * s.rank, 0.03 * R * s.rank) << "M = " << M;
  }
}

TEST(Plan, ChunkPipelineByHand) {
  // in 1, compute 2, out 1 per chunk, 2 chunks. Overlap: both inbound transfers queue first (done at
  // 1 and 2); chunk 0 computes 1-3, its outbound 3-4; chunk 1 computes 3-5, outbound 5-6.
  EXPECT_DOUBLE_EQ(chunk_pipeline_seconds(2, true, 1, 2, 1, 0), 6);
  EXPECT_DOUBLE_EQ(chunk_pipeline_seconds(2, false, 1, 2, 1, 0), 8);
  // With 3 of work meanwhile (the shared experts), the inbound transfers hide behind it entirely.
  EXPECT_DOUBLE_EQ(chunk_pipeline_seconds(2, true, 1, 2, 1, 3), 8);
  EXPECT_DOUBLE_EQ(chunk_pipeline_seconds(2, false, 1, 2, 1, 3), 11);
}

TEST(Plan, DataParallelRingByHand) {
  RunConfig run = load_config(source("examples/tiny.toml"));
  run.dist.bucket_mb = 0.1;
  const Model model(run.model);
  const HardwareProfile hw = round_machine();
  PlanOptions o;
  o.gpus = 4, o.micro_batch = 1;
  const TrainPlan p = plan_training(model, 16, hw, o, run.dist);
  // One node: f32 gradients S = 4 x padded params, in ceil(S / 0.1 MB) buckets, each all-reduced
  // in 2(N-1) steps of latency + (S_b / N) / bandwidth on the intra link.
  const double S = 4.0 * static_cast<double>(model.params().numel_padded()), N = 4;
  const double nb = std::ceil(S / 1e5), sb = S / nb;
  ASSERT_EQ(p.comms.size(), 1u);
  EXPECT_DOUBLE_EQ(p.comms[0].calls, nb);
  EXPECT_DOUBLE_EQ(p.comms[0].bytes[0], 2 * (N - 1) / N * S);
  EXPECT_DOUBLE_EQ(p.comms[0].bytes[1], 0);
  EXPECT_NEAR(p.dp_s, nb * 2 * (N - 1) * (10e-6 + sb / N / 100e9), 1e-15);
  // Two nodes of 2: the ring crosses the inter link, the slower one.
  o.gpus = 0, o.nodes = 2;
  HardwareProfile two = hw;
  two.gpus_per_node = 2;
  const TrainPlan q = plan_training(model, 16, two, o, run.dist);
  EXPECT_NEAR(q.dp_s, nb * 2 * (N - 1) * (20e-6 + sb / N / 10e9), 1e-15);
  // Of the ring's 4 ranks, the 2 whose next rank sits on the other node send across: half, per GPU.
  EXPECT_DOUBLE_EQ(q.comms[0].bytes[0], (N - 1) / N * S);
  EXPECT_DOUBLE_EQ(q.comms[0].bytes[1], (N - 1) / N * S);
  // ZeRO-1: a reduce-scatter during backward and an all-gather after the update, (N-1) steps each;
  // the all-gather is exposed whole.
  o.zero = 1;
  const TrainPlan z = plan_training(model, 16, two, o, run.dist);
  ASSERT_EQ(z.comms.size(), 2u);
  EXPECT_NEAR(z.comms[1].seconds, nb * (N - 1) * (20e-6 + sb / N / 10e9), 1e-15);
  EXPECT_GE(z.dp_exposed_s, z.comms[1].seconds);
  EXPECT_NEAR(z.dp_s, z.comms[0].seconds + z.comms[1].seconds, 1e-15);
  // The step adds up: compute + exposed communication, and tokens/s, MFU follow from it.
  double phases = 0;
  for (double s : p.seconds) phases += s;
  EXPECT_NEAR(p.step_s, phases, 1e-12);
  EXPECT_NEAR(p.step_s, p.compute_s + p.dp_exposed_s + p.ep_exposed_s, 1e-12);
  EXPECT_NEAR(p.tokens_per_s, 4 * 16 / p.step_s, 1e-6);
  EXPECT_NEAR(p.mfu, p.flops_per_token * p.tokens_per_s / (4 * 100e12), 1e-12);
}

TEST(Plan, ComputeByHand) {
  const RunConfig run = load_config(source("examples/shakespeare_dense.toml"));
  const Model model(run.model);
  const HardwareProfile hw = round_machine();
  PlanOptions o;
  o.gpus = 1, o.micro_batch = 2;
  const TrainPlan p = plan_training(model, 64, hw, o, run.dist);
  const double n = 128;
  const LayerCost c = model.cost({2, 64, DType::BF16});
  EXPECT_NEAR(p.seconds[static_cast<size_t>(Phase::DenseGemm)], n * c.flops(Phase::DenseGemm) / (100e12 * 0.5), 1e-15);
  EXPECT_NEAR(p.seconds[static_cast<size_t>(Phase::Attention)], n * c.flops(Phase::Attention) / (100e12 * 0.25), 1e-15);
  EXPECT_NEAR(p.seconds[static_cast<size_t>(Phase::NormElementwise)],
              kArenaPasses * static_cast<double>(c.activation_bytes) / 1e12, 1e-15);
  const double params = static_cast<double>(model.params().numel_padded());
  EXPECT_NEAR(p.seconds[static_cast<size_t>(Phase::Optimizer)], (kOptimizerBytes + kGradBytes) * params / 1e12, 1e-15);
  EXPECT_TRUE(p.comms.empty());
  // fp8 runs the matmuls at the fp8 peak and attention at bf16's.
  o.precision = "fp8";
  const TrainPlan f = plan_training(model, 64, hw, o, run.dist);
  EXPECT_NEAR(f.seconds[static_cast<size_t>(Phase::DenseGemm)], p.seconds[static_cast<size_t>(Phase::DenseGemm)] / 2, 1e-15);
  EXPECT_NEAR(f.seconds[static_cast<size_t>(Phase::Attention)], p.seconds[static_cast<size_t>(Phase::Attention)], 1e-15);
  o.precision = "fp8";
  HardwareProfile a100 = hw;
  a100.peak_fp8_tflops = 0;
  EXPECT_THROW(plan_training(model, 64, a100, o, run.dist), ConfigError);
}

// EP 8 on 2 nodes of 4 (so that the ranks per node and the nodes enter differently), fp8 dispatch.
TEST(Plan, ExpertParallelBytesAndTimeByHand) {
  RunConfig run = load_config(source("examples/ep_fine64.toml"));  // E = 64, K = 6, D = 128
  const Model model(run.model);
  const HardwareProfile hw = round_machine();  // 4 GPUs per node
  PlanOptions o;
  o.gpus = 8, o.ep = 8, o.micro_batch = 1, o.overlap = false;
  o.dispatch_dtype = "fp8";
  const TrainPlan p = plan_training(model, 128, hw, o, run.dist);
  ASSERT_EQ(p.layout.ep_nodes, 2);
  ASSERT_EQ(p.layout.ep_per_node, 4);
  // A rank holds 8 experts: missed when all 6 picks are among the other 56; a node holds 32.
  const double rank = 1 - (56.0 * 55 * 54 * 53 * 52 * 51) / (64.0 * 63 * 62 * 61 * 60 * 59);
  const double node = 1 - (32.0 * 31 * 30 * 29 * 28 * 27) / (64.0 * 63 * 62 * 61 * 60 * 59);
  const double n = 128, layers = static_cast<double>(model.moe_layers().size()), D = 128;
  // First hop: the 3 other ranks of the node directly, the other node's proxy once, in fp8 with a
  // 4-byte scale per 128 channels; the proxy forwards to the 3 others of its node in bf16.
  const double direct = 3 * rank, remote = 1 * node, forwards = 1 * 3 * rank;
  const double fp8_row = D + 4, act_row = 2 * D;
  const PlanComm* dispatch = nullptr;
  for (const PlanComm& c : p.comms)
    if (c.what.rfind("EP dispatch", 0) == 0) dispatch = &c;
  ASSERT_NE(dispatch, nullptr);
  EXPECT_NEAR(dispatch->bytes[0], layers * n * (direct * fp8_row + forwards * act_row), 1e-6);
  EXPECT_NEAR(dispatch->bytes[1], layers * n * remote * fp8_row, 1e-6);
  EXPECT_NEAR(p.ep_nodes_per_token, 2 * node, 1e-12);
  // Its time: per chunk of 64 tokens, the first hop at the slower class, the second hop, and the
  // scales' own all-to-all (a latency); 2 chunks per layer.
  const double chunk = 64;
  const double hop1 = std::max(10e-6 + chunk * direct * fp8_row / 100e9, 20e-6 + chunk * remote * fp8_row / 10e9);
  const double hop2 = 10e-6 + chunk * forwards * act_row / 100e9;
  EXPECT_NEAR(dispatch->seconds, 2 * layers * (hop1 + hop2 + 20e-6), 1e-12);
  // Node-limited to one node: the other node only with chance 1/2.
  o.max_nodes_per_token = 1;
  const TrainPlan m = plan_training(model, 128, hw, o, run.dist);
  EXPECT_NEAR(m.ep_nodes_per_token, 1.0, 1e-12);
  // DP 2 x EP 4 with ZeRO-1: the dense gradients over all 8 (reduce-scatter, then all-gather), the
  // experts' over the 2 replicas (an all-reduce: their optimizer state is not sharded further).
  PlanOptions dp2 = o;
  dp2.ep = 4, dp2.zero = 1;
  const TrainPlan z = plan_training(model, 128, hw, dp2, run.dist);
  std::vector<std::string> dp_comms;
  double dp_sum = 0;
  for (const PlanComm& c : z.comms)
    if (c.what.rfind("EP", 0) != 0) dp_sum += c.seconds, dp_comms.push_back(c.what);
  EXPECT_EQ(dp_comms, (std::vector<std::string>{"reduce-scatter gradients (dense)", "all-gather parameters (dense)",
                                                "all-reduce gradients (experts, over EP replicas)"}));
  EXPECT_NEAR(z.dp_s, dp_sum, 1e-15);
  // Overlap never exposes more than running serially, and never less than nothing.
  o.overlap = true;
  const TrainPlan ov = plan_training(model, 128, hw, o, run.dist);
  EXPECT_LT(ov.ep_exposed_s, ov.ep_serial_exposed_s);
  EXPECT_GE(ov.ep_exposed_s, 0);
}

// Without EP, ZeRO-1 shards all of AdamW's state (the experts' too) over the ranks.
TEST(Plan, OptimizerShareByHand) {
  const RunConfig run = load_config(source("examples/ep_fine64.toml"));
  const Model model(run.model);
  const HardwareProfile hw = round_machine();
  PlanOptions o;
  o.gpus = 4, o.micro_batch = 1, o.zero = 1;
  const TrainPlan p = plan_training(model, 128, hw, o, run.dist);
  const double P = static_cast<double>(model.params().numel_padded());
  EXPECT_NEAR(p.seconds[static_cast<size_t>(Phase::Optimizer)], (kOptimizerBytes * P / 4 + kGradBytes * P) / 1e12, 1e-15);
}

TEST(Plan, DecodeByHand) {
  const RunConfig run = load_config(source("examples/deepseek_v3.toml"));
  const Model model(run.model);
  HardwareProfile hw = round_machine();
  hw.gpus_per_node = 8;
  PlanOptions o;
  o.gpus = 8, o.ep = 8, o.batch = 64, o.context = 1000;
  const DecodePlan p = plan_decode(model, hw, o, 4096);
  // MLA caches Ckv + Dr = 576 bf16 numbers per layer; MHA would cache H (Dn + Dr + Dv) = 128 x 320.
  EXPECT_EQ(p.kv_bytes_per_token, 61 * 576 * 2);
  EXPECT_EQ(p.kv_mha_bytes_per_token, 61 * 128 * 320 * 2);
  EXPECT_DOUBLE_EQ(p.kv_bytes, 8 * 1000.0 * 61 * 576 * 2);  // 64 / 8 sequences per GPU
  // Weights: the 58 MoE layers' 32 local experts, each picked by one of 64 tokens with chance
  // 1 - (1 - 8/256)^64, besides everything every token reads.
  const double hit = 32 * (1 - std::pow(1 - 8.0 / 256, 64));
  const double expert = 3.0 * 7168 * 2048;
  const ModelInfo info = model_info(model, 1, 1, DType::BF16);
  // Everything every token reads: attention, the dense layers, shared experts, router, norms, head.
  const double dense = static_cast<double>(info.attention.total + info.dense_ffn.total + info.shared_experts.total +
                                           info.router.total + info.norms.total + info.lm_head.total);
  EXPECT_NEAR(p.weight_bytes, 2 * (dense + 58 * hit * expert), 1);
  EXPECT_NEAR(p.memory_s, (p.weight_bytes + p.kv_bytes) / 1e12, 1e-12);
  EXPECT_NEAR(p.token_s, std::max(p.memory_s, p.compute_s) + p.comm_s, 1e-12);
  EXPECT_NEAR(p.token_overlap_s, std::max({p.memory_s, p.compute_s, p.comm_s}), 1e-12);
  EXPECT_GT(p.comm_s, 0);
}

// Tied embeddings: the table is the head, which every output token reads (as an untied head is).
TEST(Plan, DecodeReadsATiedHead) {
  RunConfig run = load_config(source("examples/tiny.toml"));
  const HardwareProfile hw = round_machine();
  PlanOptions o;
  o.gpus = 1, o.context = 16;
  run.model.tie_word_embeddings = false;
  const DecodePlan untied = plan_decode(Model(run.model), hw, o, 16);
  run.model.tie_word_embeddings = true;
  const DecodePlan tied = plan_decode(Model(run.model), hw, o, 16);
  EXPECT_DOUBLE_EQ(tied.weight_bytes, untied.weight_bytes);
  EXPECT_DOUBLE_EQ(tied.compute_s, untied.compute_s);
}

TEST(Plan, EveryHardwareFileReads) {
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(source("examples/hardware"))) {
    if (e.path().extension() != ".toml") continue;
    SCOPED_TRACE(e.path().string());
    const HardwareProfile hw = read_hardware_file(e.path().string());
    EXPECT_FALSE(hw.name.empty());
    ++files;
  }
  EXPECT_GE(files, 7);
}

TEST(Plan, BadHardwareFilesNameTheProblem) {
  std::string good;
  for (const HardwareField& f : hardware_fields())
    good += std::string(f.name) + " = " + (f.type() == "string" ? "\"x\"" : f.type() == "integer" ? "8" : "0.5") + "\n";
  EXPECT_NO_THROW(parse_hardware_toml("[hardware]\n" + good, "ok.toml"));
  auto message = [](const std::string& text) {
    try {
      parse_hardware_toml(text, "h.toml");
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(message("[hardware]\n" + good + "peak_bf17_tflops = 1\n").find("unknown key 'peak_bf17_tflops' (did you "
                                                                            "mean 'peak_bf16_tflops'?)"),
            std::string::npos);
  std::string missing = good;
  missing.erase(missing.find("memory_gbps"), missing.find('\n', missing.find("memory_gbps")) - missing.find("memory_gbps") + 1);
  EXPECT_NE(message("[hardware]\n" + missing).find("memory_gbps is missing"), std::string::npos);
  std::string bad = good;
  bad.replace(bad.find("link_efficiency = 0.5"), 21, "link_efficiency = 1.5");
  EXPECT_NE(message("[hardware]\n" + bad).find("link_efficiency = 1.5 must be in (0, 1]"), std::string::npos);
  EXPECT_NE(message("[hw]\n" + good).find("unknown section [hw]"), std::string::npos);
  EXPECT_NE(message("[hardware]\n" + good).find("no error"), std::string::npos);
}

TEST(Plan, EmulatedLinksReplaceTheMachines) {
  const HardwareProfile hw = round_machine();
  DistConfig d;
  EXPECT_EQ(with_emulated_links(hw, d).intra_gbps, 100);  // nothing emulated
  d.intra_gbps = 50, d.inter_gbps = 12.5, d.ranks_per_node = 2;
  const HardwareProfile e = with_emulated_links(hw, d);
  EXPECT_EQ(e.intra_gbps, 50);
  EXPECT_EQ(e.inter_gbps, 12.5);
  EXPECT_EQ(e.intra_latency_us, 0);
  EXPECT_EQ(e.gpus_per_node, 2);
  EXPECT_EQ(e.link_efficiency, 1);
  d.ranks_per_node = 0;  // emulated links on one node
  EXPECT_GE(with_emulated_links(hw, d).gpus_per_node, 1 << 20);
  DistConfig nodes_only;
  nodes_only.ranks_per_node = 2;  // emulated nodes, the machine's links
  EXPECT_EQ(with_emulated_links(hw, nodes_only).gpus_per_node, 2);
  EXPECT_EQ(with_emulated_links(hw, nodes_only).intra_gbps, 100);
  DistConfig intra_only;  // the class left alone keeps the machine's figures
  intra_only.intra_gbps = 5, intra_only.ranks_per_node = 2;
  EXPECT_EQ(with_emulated_links(hw, intra_only).intra_gbps, 5);
  EXPECT_EQ(with_emulated_links(hw, intra_only).inter_gbps, 10);
  // Emulated links on one node of any size: the plan needs the process count.
  DistConfig one_node;
  one_node.intra_gbps = 5;
  PlanOptions o;
  testing::expect_error([&] { plan_layout(ModelConfig{}, with_emulated_links(hw, one_node), o); }, "pass --gpus");
  o.gpus = 3;
  EXPECT_EQ(plan_layout(ModelConfig{}, with_emulated_links(hw, one_node), o).nodes, 1);
}

TEST(Plan, SweepIsOrderedAndStable) {
  const RunConfig run = load_config(source("examples/ep_fine64.toml"));
  const Model model(run.model);
  HardwareProfile hw = round_machine();
  hw.gpus_per_node = 8;
  PlanOptions o;
  o.gpus = 8, o.micro_batch = 2;
  const std::vector<TrainPlan> plans = sweep_training(model, 128, hw, o, run.dist);
  // EP in {1, 2, 4, 8} (each divides 64 experts and the node), ZeRO 0 and 1.
  EXPECT_EQ(plans.size(), 8u);
  for (size_t i = 1; i < plans.size(); ++i) {
    ASSERT_TRUE(plans[i - 1].fits() || !plans[i].fits());
    if (plans[i].fits()) {
      EXPECT_GE(plans[i - 1].tokens_per_s, plans[i].tokens_per_s);
    }
  }
  EXPECT_EQ(format_sweep(plans), format_sweep(sweep_training(model, 128, hw, o, run.dist)));
  // A machine too small for any layout puts the smallest memory first.
  hw.memory_gib = 1e-3;
  const std::vector<TrainPlan> none = sweep_training(model, 128, hw, o, run.dist);
  for (size_t i = 1; i < none.size(); ++i) EXPECT_LE(none[i - 1].memory.total(), none[i].memory.total());
}

TEST(Plan, BadLayoutsNameTheOption) {
  const RunConfig run = load_config(source("examples/ep_fine64.toml"));
  const HardwareProfile hw = round_machine();
  PlanOptions o;
  o.gpus = 8, o.ep = 3;
  EXPECT_THROW(plan_layout(run.model, hw, o), Error);  // 3 does not divide 8
  o.ep = 16, o.gpus = 16;
  EXPECT_NO_THROW(plan_layout(run.model, hw, o));
  o.dp = 2, o.ep = 4;
  EXPECT_THROW(plan_layout(run.model, hw, o), Error);  // 2 x 4 is not 16
}

}  // namespace
}  // namespace moelab
