// `moelab plan`: what a config costs on a machine we do not have, before renting it (examples/PLAN.md
// has the formulas with their sources and the predicted-vs-measured table). Nothing is allocated:
// the model is declared (core/nn/model.h) and its layers report their own cost (core/nn/cost.h).
//
// Training step, per GPU (world = nodes x GPUs per node = DP x EP, every GPU taking micro_batch
// sequences of seq_len tokens: n tokens):
//   compute   matmul phases (dense GEMMs, router, expert GEMMs x the busiest EP rank's imbalance):
//               n x FLOPs per token / (peak(precision) x compute_efficiency)
//             attention: n x its FLOPs / (peak(bf16 for fp8, else precision) x attention_efficiency)
//             the rest (norms, elementwise, permute, loss): kArenaPasses x the step's arena bytes
//               (the layers' count) / (memory bandwidth x memory_efficiency)
//             optimizer: kOptimizerBytes per updated parameter + kGradBytes per gradient, over memory
//   data parallel: the f32 gradients in dist.bucket_mb buckets, by the ring formulas of
//             dist/comm.h: the dense ones over the world (all-reduce 2(N-1) x (latency + (S/N) / bw);
//             ZeRO-1 a reduce-scatter and, after the update, an all-gather of (N-1) x (...) each),
//             the routed experts' over the EP replicas (always an all-reduce), each group on its own
//             communication thread. A group's buckets become ready evenly during backward and run
//             one after another: exposed = when its last one ends - when backward ends (plus the
//             all-gather after the update); without overlap, all of it. (DataParallel cuts its
//             buckets at the MoE layers' expert ranges too: with EP there are a few more, each with
//             its latency.)
//   expert parallel, per MoE layer: each token goes once to every other rank that owns one of its
//             K experts (across nodes once per node, then forwarded inside it: dist/ep_dispatch.h).
//             The chance that a rank or a node owns one of a token's experts is route_spread's
//             (below: uniform routing within the router's group or node limit). Bytes per
//             all-to-all = rows x D x the dtype's size (fp8: + 4 bytes per 128 channels, sent in an
//             all-to-all of their own), time = latency + max(bytes per link class) / bw per hop
//             (dist/comm.h's all_to_all); the layout (counts, ids, weights) before each layer's.
//             Forward: dispatch + combine; backward: their mirrors. With overlap the two chunks run
//             as MoE's pipeline does (core/nn/moe.cpp's run_chunks), which plan.cpp simulates with
//             each chunk's hops as one transfer (across nodes, EPDispatch issues the second hop
//             when the chunk is waited for, so the plan's exposed time is a lower bound there).
//   step = compute + exposed communication; tokens/s = world x n / step; MFU = model FLOPs per
//   token x tokens/s / (world x peak).
// Memory per GPU: train/parallel.h's rank_memory (what moelab holds: every expert's f32 weights and
// gradients on every rank, AdamW state 1/EP for experts and 1/world with ZeRO-1) or, with
// shard_expert_weights, what a layout that keeps only its own experts' weights and gradients would
// hold (DeepSeek's; moelab does not do it yet); activations: the layers' arena count.
//
// Decode, per output token (batch B sequences over the world, B/world each, experts over groups of
// --ep GPUs): memory-bound: the bytes read per step in the precision's width (the weights every
// token needs, the experts this GPU owns that any of its EP group's tokens picks, the KV cache of
// its sequences at context L) / memory bandwidth; compute-bound: (2 x active parameters + the
// attention over the context) x B/world / peak; with EP, per MoE layer a dispatch (fp8 rows) and a
// combine (bf16 rows) all-to-all. Reported serial and with the communication overlapped by a
// second micro-batch (DeepSeek's decoding: the max of the two).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "core/nn/model.h"
#include "core/profile.h"
#include "train/model_info.h"
#include "train/parallel.h"
#include "train/run_config.h"

namespace moelab {

// Every arena byte is written once and read about once outside the matmuls.
constexpr double kArenaPasses = 2.0;
// AdamW per updated parameter: read param, grad, m, v (f32), write param, m, v; the gradient norm
// reads and the zeroing writes every gradient.
constexpr double kOptimizerBytes = 28.0;
constexpr double kGradBytes = 8.0;

struct PlanOptions {
  int64_t nodes = 0;  // 0: from gpus (or dp x ep), else 1
  int64_t gpus = 0;   // the world; 0: nodes x gpus_per_node, or dp x ep
  int64_t dp = 0;     // 0: gpus / ep
  int64_t ep = 1;
  int64_t zero = 0;
  bool overlap = true;               // the two-chunk expert-parallel overlap (dist.overlap)
  std::string precision = "auto";    // auto (bf16 where the machine has it, else fp32) | fp32 | bf16 | fp8
  std::string dispatch_dtype;        // "" = the config's dist.dispatch_dtype; f32 | bf16 | fp8
  int64_t max_nodes_per_token = -1;  // >= 0: node-limited routing over the layout's EP nodes (0: none);
                                     // -1: the config's routing (its node or group limit)
  int64_t micro_batch = 0;           // sequences per GPU per step; 0: train.batch_size / world
  double imbalance = 1.0;            // the busiest EP rank's expert rows over the mean
  bool shard_expert_weights = false;
  // Decode.
  int64_t batch = 1;     // sequences decoding together over the world
  int64_t context = 0;   // tokens already in each sequence's cache; 0: train.seq_len
};

// The machine with the config's emulated nodes (dist.ranks_per_node GPUs per node) and links
// (dist.link, dist.intra_gbps, ...) in place of its own, the links at link_efficiency 1 (the
// emulation holds each collective for exactly the modeled time; with emulated links and no
// ranks_per_node, one node): so that `moelab plan` predicts what `mpirun ... moelab bench` with the
// same --set measures. Unchanged when the config emulates neither.
HardwareProfile with_emulated_links(HardwareProfile hw, const DistConfig& dist);

// The ranks' placement.
struct PlanLayout {
  int64_t world = 1, nodes = 1, per_node = 1, dp = 1, ep = 1, zero = 0;
  int64_t ep_nodes = 1;     // nodes one EP group spans
  int64_t ep_per_node = 1;  // ranks of one EP group per node
  std::string str() const;  // "64 GPUs = 8 nodes x 8; DP 8 x EP 8, ZeRO-1"
};
// Resolves the options against the machine and the config (checked: dp x ep = world, E % ep == 0,
// the world fills its nodes' GPUs evenly). Errors name the option and the value.
PlanLayout plan_layout(const ModelConfig& cfg, const HardwareProfile& hw, const PlanOptions& o);

// One collective kind of a step, per GPU.
struct PlanComm {
  std::string what;          // "gradient all-reduce (dense)", "EP dispatch", ...
  double calls = 0;          // per step
  double bytes[2] = {0, 0};  // sent by this GPU per step: intra-node, inter-node
  double seconds = 0;        // on the links, per step
};

struct TrainPlan {
  PlanLayout layout;
  std::string precision;
  std::string dispatch_dtype;  // what the dispatch sends: the wire dtype, or the activations' when narrower
  ModelConfig::RouteGroups route;  // the router's groups (n_group 1: no limit)
  int64_t micro_batch = 0, seq_len = 0, tokens_per_gpu = 0;
  ModelInfo info;  // at (micro_batch, seq_len) in the activation dtype
  double flops_per_token = 0;                   // the model's (MFU's numerator)
  std::array<double, kNumPhases> seconds{};     // compute per phase (CommWait: exposed communication)
  double compute_s = 0;
  std::vector<PlanComm> comms;
  double dp_s = 0, dp_exposed_s = 0;            // gradient reduction: on the links, not hidden
  double ep_s = 0, ep_exposed_s = 0, ep_serial_exposed_s = 0;  // all-to-alls; exposed with, without overlap
  double ep_rows_per_token = 0;                 // rows a token sends to other ranks (first hop)
  double ep_nodes_per_token = 0;                // nodes a token reaches (its own included)
  double step_s = 0, step_no_overlap_s = 0;
  double tokens_per_s = 0, mfu = 0;
  RankMemory memory;
  double memory_limit = 0;  // bytes per GPU
  bool fits() const { return memory.total() <= memory_limit; }
};

TrainPlan plan_training(const Model& model, int64_t seq_len, const HardwareProfile& hw, const PlanOptions& o,
                        const DistConfig& dist);
std::string format_train_plan(const TrainPlan& p, const HardwareProfile& hw);

// --sweep: every DP x EP layout of the world (EP dividing E) and ZeRO 0/1, fitting ones first by
// tokens/s (descending), then the rest by memory; ties in a fixed order.
std::vector<TrainPlan> sweep_training(const Model& model, int64_t seq_len, const HardwareProfile& hw,
                                      const PlanOptions& o, const DistConfig& dist);
std::string format_sweep(const std::vector<TrainPlan>& plans);

struct DecodePlan {
  PlanLayout layout;
  int64_t batch = 0, context = 0;
  double seqs_per_gpu = 0;
  int64_t kv_bytes_per_token = 0;       // all layers, bf16 (the config's attention)
  int64_t kv_mha_bytes_per_token = 0;   // MHA with the same heads
  double weight_bytes = 0;              // read per step per GPU (dense + the experts hit here)
  double kv_bytes = 0;                  // KV cache read per step per GPU
  double memory_s = 0, compute_s = 0;   // per output token
  double comm_s = 0;                    // EP all-to-alls per output token
  double comm_bytes[2] = {0, 0};        // per output token per GPU: intra, inter
  double token_s = 0, token_overlap_s = 0;  // serial; communication overlapped
  double tokens_per_s = 0;              // the whole world, serial
  double memory_per_gpu = 0;            // weights (the precision's width, experts / EP) + KV cache of its sequences
  double memory_limit = 0;
};
DecodePlan plan_decode(const Model& model, const HardwareProfile& hw, const PlanOptions& o, int64_t seq_len);
std::string format_decode_plan(const DecodePlan& p, const HardwareProfile& hw);

// MoE's chunk pipeline (core/nn/moe.cpp, run_chunks) on two resources, the communication thread and
// the compute stream, each chunk taking `in` to arrive, `compute`, and `out` to go back: with
// overlap every inbound transfer is queued first and `meanwhile` (the shared experts) computes,
// then each chunk waits for its rows, computes and queues its outbound transfer; without, every
// transfer is waited for at once. The section's time.
double chunk_pipeline_seconds(int64_t chunks, bool overlap, double in, double compute, double out, double meanwhile);

// Where a token's K experts sit on R ranks (E/R consecutive experts each) in `nodes` nodes when the
// router keeps it in tg of G equal expert groups (node-limited routing: the expert nodes; group-
// limited: n_group; G = 1: no limit), modeled as: tg groups drawn uniformly, then K experts
// uniformly among theirs. The chance that a given rank, or node, owns at least one of them: for a
// unit of u experts inside one group of g, tg/G x (1 - C(tg g - u, K) / C(tg g, K)); for a unit of
// m whole groups, the hypergeometric sum over the j of them drawn. The expected number of other
// ranks a token reaches is (R - 1) x rank; of nodes, its own included, nodes x node.
struct RouteSpread {
  double rank = 0;
  double node = 0;
};
RouteSpread route_spread(int64_t E, int64_t K, int64_t R, int64_t nodes, int64_t G = 1, int64_t tg = 1);

}  // namespace moelab
