// The cost model of `moelab plan`; the formulas are in plan.h, their sources in examples/PLAN.md.
#include "train/plan.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>

#include "core/check.h"
#include "dist/comm.h"

namespace moelab {

namespace {

using dist::human_bytes;
using dist::Link;
// gpus_per_node of emulated links without emulated nodes: every process on one node.
constexpr int64_t kOneNode = int64_t{1} << 20;
constexpr int64_t kEpChunks = dist::EPDispatch::kChunks;  // the tokens' halves of MoE's pipeline

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// "12.3 ms", "4.56 s", "789 us"
std::string human_seconds(double s) {
  if (s >= 1) return fmt("%.3g s", s);
  if (s >= 1e-3) return fmt("%.3g ms", s * 1e3);
  return fmt("%.3g us", s * 1e6);
}

std::string human_count(double v) {
  const char* unit[] = {"", " k", " M", " G", " T", " P"};
  int u = 0;
  while (std::fabs(v) >= 1000 && u < 5) v /= 1000, ++u;
  return fmt("%.4g", v) + unit[u];
}

// C(a, K) / C(b, K) for a <= b: the chance that K distinct draws from b items all miss b - a of them.
double all_miss(double a, double b, int64_t K) {
  double r = 1;
  for (int64_t i = 0; i < K; ++i) r *= std::max(0.0, a - static_cast<double>(i)) / (b - static_cast<double>(i));
  return r;
}

// The effective link a collective sees: the peak bandwidth times link_efficiency.
Link effective(double gbps, double latency_us, double efficiency) { return Link{gbps * efficiency, latency_us}; }

// One transfer with `intra` and `inter` bytes: the slower link class (dist/comm.h's all_to_all).
double hop_seconds(double intra, double inter, const Link& li, const Link& le) {
  double t = 0;
  if (intra > 0) t = std::max(t, li.seconds(intra));
  if (inter > 0) t = std::max(t, le.seconds(inter));
  return t;
}

}  // namespace

double chunk_pipeline_seconds(int64_t chunks, bool overlap, double in, double compute, double out, double meanwhile) {
  if (!overlap) return meanwhile + static_cast<double>(chunks) * (in + compute + out);
  std::vector<double> arrive(static_cast<size_t>(chunks));
  double comm = 0;
  for (double& a : arrive) a = comm += in;
  double t = meanwhile;
  for (double a : arrive) {
    t = std::max(t, a) + compute;
    comm = std::max(comm, t) + out;
  }
  return std::max(t, comm);
}

namespace {

// The number of distinct nodes the ranks [first + k stride) for k < count sit on.
int64_t nodes_spanned(int64_t first, int64_t stride, int64_t count, int64_t per_node) {
  std::vector<int64_t> seen;
  for (int64_t k = 0; k < count; ++k) {
    const int64_t n = (first + k * stride) / per_node;
    if (std::find(seen.begin(), seen.end(), n) == seen.end()) seen.push_back(n);
  }
  return static_cast<int64_t>(seen.size());
}

// The activation dtype and the bytes of one compute-copy weight for a precision.
DType act_dtype(const std::string& precision) { return precision == "fp32" ? DType::F32 : DType::BF16; }

std::string resolve_precision(const std::string& p, const HardwareProfile& hw) {
  if (p == "auto") return hw.peak_bf16_tflops > 0 ? "bf16" : "fp32";
  hw.peak_flops(p);  // checks the name and that the machine has it
  return p;
}

double dtype_bytes(const std::string& d) { return d == "fp8" ? 1 : d == "bf16" ? 2 : 4; }

// Bytes of one dispatched row of D channels in the wire dtype (fp8: one f32 scale per 128 channels).
double wire_row_bytes(int64_t D, const std::string& wire) {
  return static_cast<double>(D) * dtype_bytes(wire) + (wire == "fp8" ? 4.0 * static_cast<double>((D + 127) / 128) : 0);
}

// The router's groups (core/ops/moe_route.h): node-limited routing keeps a token in the best M of
// the expert_nodes groups, group-limited routing in the best topk_group of n_group; --max-nodes-per-
// token M (>= 0) plans node-limited routing over the layout's EP nodes instead.
ModelConfig::RouteGroups plan_route_groups(ModelConfig cfg, int64_t max_nodes_override, int64_t ep_nodes) {
  if (max_nodes_override >= 0) {
    cfg.max_nodes_per_token = max_nodes_override;
    cfg.expert_nodes = ep_nodes;
  }
  return cfg.route_groups();
}

// ln C(n, k)
double log_choose(double n, double k) { return std::lgamma(n + 1) - std::lgamma(k + 1) - std::lgamma(n - k + 1); }

// The chance that a unit of u consecutive experts (a rank's, a node's) owns at least one of a
// token's K experts (see RouteSpread).
double unit_hit(int64_t E, int64_t K, int64_t G, int64_t tg, int64_t u) {
  const int64_t g = E / G;  // experts per group
  const double pool = static_cast<double>(tg * g);
  MOELAB_CHECK(pool >= static_cast<double>(K), "route_spread: ", tg, " of ", G, " groups hold ", pool,
               " experts, fewer than K = ", K);
  if (u <= g) {  // the unit lies inside one group, which is among the token's with chance tg / G
    MOELAB_CHECK(g % u == 0, "route_spread: units of ", u, " experts straddle the groups of ", g);
    return static_cast<double>(tg) / static_cast<double>(G) * (1 - all_miss(pool - static_cast<double>(u), pool, K));
  }
  MOELAB_CHECK(u % g == 0, "route_spread: units of ", u, " experts straddle the groups of ", g);
  const int64_t m = u / g;  // whole groups in the unit; j of them among the token's (hypergeometric)
  double p = 0;
  for (int64_t j = 1; j <= std::min(m, tg); ++j) {
    if (tg - j > G - m) continue;
    const double chosen = std::exp(log_choose(m, j) + log_choose(G - m, tg - j) - log_choose(G, tg));
    p += chosen * (1 - all_miss(pool - static_cast<double>(j * g), pool, K));
  }
  return p;
}

}  // namespace

RouteSpread route_spread(int64_t E, int64_t K, int64_t R, int64_t nodes, int64_t G, int64_t tg) {
  MOELAB_CHECK(R >= 1 && E % R == 0 && nodes >= 1 && R % nodes == 0 && K >= 1 && K <= E && G >= 1 && E % G == 0 &&
                   tg >= 1 && tg <= G,
               "route_spread: E = ", E, ", K = ", K, ", R = ", R, ", nodes = ", nodes, ", groups ", tg, " of ", G,
               " (expected R | E, nodes | R, 1 <= K <= E, G | E, 1 <= tg <= G)");
  return {unit_hit(E, K, G, tg, E / R), unit_hit(E, K, G, tg, E / nodes)};
}

HardwareProfile with_emulated_links(HardwareProfile hw, const DistConfig& dist) {
  if (dist.ranks_per_node > 0) hw.gpus_per_node = dist.ranks_per_node;
  const dist::LinkModel link = comm_options(dist).link;
  if (!link.emulated()) return hw;
  // A class the emulation leaves alone runs as fast as the machine: the machine's own figures.
  hw.name += " (emulated links)";
  if (link.intra.gbytes_per_s > 0) hw.intra_gbps = link.intra.gbytes_per_s, hw.intra_latency_us = link.intra.latency_us;
  if (link.inter.gbytes_per_s > 0) hw.inter_gbps = link.inter.gbytes_per_s, hw.inter_latency_us = link.inter.latency_us;
  hw.link_efficiency = 1;
  if (dist.ranks_per_node == 0) hw.gpus_per_node = kOneNode;
  return hw;
}

std::string PlanLayout::str() const {
  std::string s = std::to_string(world) + (world == 1 ? " GPU" : " GPUs");
  if (nodes > 1) s += " = " + std::to_string(nodes) + " nodes x " + std::to_string(per_node);
  s += "; DP " + std::to_string(dp) + " x EP " + std::to_string(ep);
  if (ep > 1 && ep_nodes > 1) s += " (an EP group spans " + std::to_string(ep_nodes) + " nodes)";
  if (zero) s += ", ZeRO-1";
  return s;
}

PlanLayout plan_layout(const ModelConfig& cfg, const HardwareProfile& hw, const PlanOptions& o) {
  PlanLayout l;
  MOELAB_CHECK(o.ep >= 1, "--ep ", o.ep, " must be >= 1");
  MOELAB_CHECK(o.zero == 0 || o.zero == 1, "--zero ", o.zero, " is not 0 or 1");
  MOELAB_CHECK(o.nodes >= 0 && o.gpus >= 0 && o.dp >= 0, "--nodes, --gpus and --dp must be >= 0");
  l.ep = o.ep;
  l.zero = o.zero;
  MOELAB_CHECK(o.gpus > 0 || o.dp > 0 || hw.gpus_per_node < kOneNode, "the config emulates links on one node of any "
               "size (dist.ranks_per_node = 0): pass --gpus (the processes mpirun starts)");
  if (o.gpus > 0) l.world = o.gpus;
  else if (o.dp > 0) l.world = o.dp * o.ep;
  else l.world = std::max<int64_t>(o.nodes, 1) * hw.gpus_per_node;
  if (o.dp > 0)
    MOELAB_CHECK(o.dp * o.ep == l.world, "--dp ", o.dp, " x --ep ", o.ep, " = ", o.dp * o.ep, " is not the ", l.world,
                 " GPUs of the plan");
  MOELAB_CHECK(l.world % l.ep == 0, "--ep ", l.ep, " does not divide the ", l.world, " GPUs (world = DP x EP)");
  l.dp = l.world / l.ep;
  l.nodes = o.nodes > 0 ? o.nodes : (l.world + hw.gpus_per_node - 1) / hw.gpus_per_node;
  MOELAB_CHECK(l.world % l.nodes == 0 && l.world / l.nodes <= hw.gpus_per_node, "the ", l.world, " GPUs do not fill ",
               l.nodes, " nodes of ", hw.name, " (", hw.gpus_per_node, " GPUs per node) evenly");
  l.per_node = l.world / l.nodes;
  if (l.ep > 1) {
    MOELAB_CHECK(cfg.ffn == FfnKind::MoE, "--ep ", l.ep, ": the model has no routed experts (ffn = dense)");
    MOELAB_CHECK(cfg.n_routed_experts % l.ep == 0, "--ep ", l.ep, " does not divide n_routed_experts = ",
                 cfg.n_routed_experts);
    MOELAB_CHECK(l.ep % l.per_node == 0 || l.per_node % l.ep == 0, "--ep ", l.ep, " and the ", l.per_node,
                 " GPUs per node: an EP group must fill whole nodes or sit inside one");
  }
  l.ep_nodes = l.ep > l.per_node ? l.ep / l.per_node : 1;
  l.ep_per_node = l.ep / l.ep_nodes;
  return l;
}

TrainPlan plan_training(const Model& model, int64_t seq_len, const HardwareProfile& hw, const PlanOptions& o,
                        const DistConfig& dist) {
  const ModelConfig& cfg = model.config();
  TrainPlan p;
  p.layout = plan_layout(cfg, hw, o);
  const PlanLayout& l = p.layout;
  p.precision = resolve_precision(o.precision, hw);
  p.dispatch_dtype = o.dispatch_dtype.empty() ? dist.dispatch_dtype : o.dispatch_dtype;
  MOELAB_CHECK(p.dispatch_dtype == "f32" || p.dispatch_dtype == "bf16" || p.dispatch_dtype == "fp8",
               "--dispatch-dtype '", p.dispatch_dtype, "' is not one of f32, bf16, fp8");
  // A wire no narrower than the activations sends them as they are (dist/ep_dispatch.h).
  const std::string act_name = p.precision == "fp32" ? "f32" : "bf16";
  if (dtype_bytes(p.dispatch_dtype) >= dtype_bytes(act_name)) p.dispatch_dtype = act_name;
  p.route = plan_route_groups(cfg, o.max_nodes_per_token, l.ep_nodes);
  MOELAB_CHECK(o.imbalance >= 1, "--imbalance ", o.imbalance, " must be >= 1 (the busiest rank over the mean)");
  p.seq_len = seq_len;
  p.micro_batch = o.micro_batch;
  MOELAB_CHECK(p.micro_batch > 0, "the micro-batch per GPU is ", p.micro_batch, " (pass --micro-batch)");
  p.tokens_per_gpu = p.micro_batch * seq_len;
  const double n = static_cast<double>(p.tokens_per_gpu);
  const DType act = act_dtype(p.precision);
  p.info = model_info(model, p.micro_batch, seq_len, act);
  const LayerCost& c = p.info.cost;
  p.flops_per_token = p.info.flops_per_token;

  // Compute.
  const double matmul_rate = hw.peak_flops(p.precision) * hw.compute_efficiency;
  const double attention_rate = hw.peak_flops(p.precision == "fp8" ? "bf16" : p.precision) * hw.attention_efficiency;
  const double bw = hw.memory_gbps * 1e9 * hw.memory_efficiency;
  auto phase = [&](Phase ph) { return static_cast<size_t>(ph); };
  for (Phase ph : {Phase::Router, Phase::DenseGemm, Phase::ExpertGemm})
    p.seconds[phase(ph)] = n * c.flops(ph) / matmul_rate;
  p.seconds[phase(Phase::ExpertGemm)] *= o.imbalance;
  p.seconds[phase(Phase::Attention)] = n * c.flops(Phase::Attention) / attention_rate;
  p.seconds[phase(Phase::NormElementwise)] = kArenaPasses * static_cast<double>(c.activation_bytes) / bw;
  const double params = static_cast<double>(model.params().numel_padded());
  const double experts = static_cast<double>(model.expert_elements());
  // Expert parallelism keeps AdamW state for its own experts (not sharded further); ZeRO-1 shards the
  // rest over every rank (without EP, everything).
  const double own_experts = l.ep > 1 ? experts / static_cast<double>(l.ep) : 0, shared = l.ep > 1 ? params - experts : params;
  const double updated = shared / (l.zero ? static_cast<double>(l.world) : 1) + own_experts;
  p.seconds[phase(Phase::Optimizer)] = (kOptimizerBytes * updated + kGradBytes * params) / bw;
  for (double s : p.seconds) p.compute_s += s;
  const double backward_s = (p.compute_s - p.seconds[phase(Phase::Optimizer)]) * 2.0 / 3.0;

  // Data parallel: the gradient buckets. The dense gradients go over every rank (ZeRO-1: a
  // reduce-scatter, and after the update an all-gather of the parameters), the experts' over the
  // ranks holding the same experts (always an all-reduce: their AdamW state is not sharded further);
  // the two groups have their own communication threads and run side by side.
  const Link intra = effective(hw.intra_gbps, hw.intra_latency_us, hw.link_efficiency);
  const Link inter = effective(hw.inter_gbps, hw.inter_latency_us, hw.link_efficiency);
  const double bucket = dist.bucket_mb * 1e6;
  struct Group {
    const char* what;  // "dense", "experts, over EP replicas"
    double bytes;      // f32 gradients this group reduces
    int64_t ranks;     // its size
    int64_t nodes;     // the nodes it spans
    bool sharded;      // ZeRO-1: reduce-scatter + all-gather, else all-reduce
  };
  const int64_t replica_nodes = nodes_spanned(0, l.ep, l.dp, l.per_node);
  const Group groups[] = {
      {"dense", 4 * shared, l.world, l.nodes, l.zero == 1},
      {"experts, over EP replicas", 4 * own_experts * static_cast<double>(l.ep > 1), l.dp, replica_nodes, false},
  };
  for (const Group& g : groups) {
    if (g.bytes <= 0 || g.ranks < 2) continue;
    const Link& link = g.nodes > 1 ? inter : intra;
    const double N = static_cast<double>(g.ranks), nb = std::ceil(g.bytes / bucket), sb = g.bytes / nb;
    const double steps = g.sharded ? N - 1 : 2 * (N - 1);
    const double bucket_s = steps * link.seconds(sb / N), reduce_s = nb * bucket_s;
    // In a ring over several nodes, one rank per node sends to the next node, the others inside theirs.
    const double inter_share = g.nodes > 1 ? static_cast<double>(g.nodes) / N : 0;
    const double sent = steps / N * g.bytes;  // the reduction's bytes per rank
    p.comms.push_back({std::string(g.sharded ? "reduce-scatter" : "all-reduce") + " gradients (" + g.what + ")", nb,
                       {sent * (1 - inter_share), sent * inter_share}, reduce_s});
    // nb equal buckets become ready evenly over backward and run one after another: the last ends
    // at max(its own readiness, the first's + all of them) + one bucket.
    double exposed = std::max(0.0, std::max(backward_s, backward_s / nb + (nb - 1) * bucket_s) + bucket_s - backward_s);
    p.dp_s += reduce_s;
    if (g.sharded) {
      const double gather_s = nb * (N - 1) * link.seconds(sb / N), gathered = (N - 1) / N * g.bytes;
      p.comms.push_back({std::string("all-gather parameters (") + g.what + ")", nb,
                         {gathered * (1 - inter_share), gathered * inter_share}, gather_s});
      p.dp_s += gather_s;
      exposed += gather_s;  // after the update, before the next forward
    }
    p.dp_exposed_s = std::max(p.dp_exposed_s, exposed);
  }

  // Expert parallel: four all-to-alls per MoE layer, in chunks.
  const int64_t moe_layers = static_cast<int64_t>(model.moe_layers().size());
  if (l.ep > 1 && moe_layers > 0) {
    const int64_t E = cfg.n_routed_experts, K = cfg.num_experts_per_tok, D = cfg.hidden_size;
    const RouteSpread r = route_spread(E, K, l.ep, l.ep_nodes, p.route.n_group, p.route.topk_group);
    const double pn = static_cast<double>(l.ep_per_node), nn = static_cast<double>(l.ep_nodes);
    const double direct = (pn - 1) * r.rank, remote = (nn - 1) * r.node;  // first-hop rows per token
    const double forwards = (nn - 1) * (pn - 1) * r.rank;                 // second-hop rows per token
    p.ep_rows_per_token = direct + remote;
    p.ep_nodes_per_token = nn * r.node;
    const double act_row = static_cast<double>(D) * dtype_bytes(act_name);
    const double wire_row = wire_row_bytes(D, p.dispatch_dtype);
    const double chunk = n * o.imbalance / static_cast<double>(kEpChunks);
    // One way of one chunk: (first-hop intra, first-hop inter, second-hop intra) bytes, row size given.
    auto one_way = [&](double first_row, double second_row) {
      return hop_seconds(chunk * direct * first_row, chunk * remote * first_row, intra, inter) +
             (forwards > 0 ? intra.seconds(chunk * forwards * second_row) : 0);
    };
    // fp8 sends its scales in an all-to-all of their own (their bytes are in wire_row): one more latency.
    const double scales_latency =
        p.dispatch_dtype == "fp8" ? 1e-6 * std::max(direct > 0 ? intra.latency_us : 0.0, remote > 0 ? inter.latency_us : 0.0) : 0;
    const double to_experts = one_way(wire_row, act_row) + scales_latency;
    const double back = one_way(act_row, act_row), grad_to_experts = one_way(act_row, act_row);
    // The layout, once per layer and hop: the counts (a latency), then the expert ids and the gate
    // weights of each row (K i32 and K f32), one all-to-all each.
    const double slot = 4.0 * static_cast<double>(K);
    const double layout_s = hop_seconds(1, 1, intra, inter) +
                            2 * hop_seconds(n * direct * slot, n * remote * slot, intra, inter) +
                            (forwards > 0 ? intra.seconds(0) + 2 * intra.seconds(n * forwards * slot) : 0);
    const double layer_fwd = p.seconds[phase(Phase::ExpertGemm)] / 3 / static_cast<double>(moe_layers);
    const double shared_fwd = 2.0 * 3 * static_cast<double>(D * cfg.n_shared_experts * cfg.moe_intermediate_size) * n / matmul_rate;
    auto exposed = [&](bool overlap) {
      const double fwd = chunk_pipeline_seconds(kEpChunks, overlap, to_experts, layer_fwd / kEpChunks, back, shared_fwd) -
                         layer_fwd - shared_fwd;
      const double bwd = chunk_pipeline_seconds(kEpChunks, overlap, grad_to_experts, 2 * layer_fwd / kEpChunks, back,
                                        2 * shared_fwd) - 2 * layer_fwd - 2 * shared_fwd;
      return static_cast<double>(moe_layers) * (layout_s + fwd + bwd);
    };
    p.ep_exposed_s = exposed(o.overlap);
    p.ep_serial_exposed_s = exposed(false);
    const double layers = static_cast<double>(moe_layers), per_way = kEpChunks * layers;
    auto bytes = [&](double first_row, double second_row, double ways) {
      return std::array<double, 2>{ways * n * (direct * first_row + forwards * second_row), ways * n * remote * first_row};
    };
    const auto d = bytes(wire_row, act_row, layers), rest = bytes(act_row, act_row, 3 * layers);
    p.comms.push_back({"EP dispatch (" + p.dispatch_dtype + ")", per_way, {d[0], d[1]}, per_way * to_experts});
    p.comms.push_back({"EP combine + backward", 3 * per_way, {rest[0], rest[1]},
                       per_way * (back + grad_to_experts + back)});
    p.comms.push_back({"EP layout (counts, ids, weights)", (forwards > 0 ? 6 : 3) * layers,
                       {layers * n * (direct + forwards) * 2 * slot, layers * n * remote * 2 * slot},
                       layers * layout_s});
    p.ep_s = per_way * (to_experts + 2 * back + grad_to_experts) + layers * layout_s;
  }

  p.seconds[phase(Phase::CommWait)] = p.dp_exposed_s + p.ep_exposed_s;
  p.step_s = p.compute_s + p.dp_exposed_s + p.ep_exposed_s;
  p.step_no_overlap_s = p.compute_s + p.dp_s + p.ep_serial_exposed_s;
  p.tokens_per_s = static_cast<double>(l.world) * n / p.step_s;
  p.mfu = p.flops_per_token * p.tokens_per_s / (static_cast<double>(l.world) * hw.peak_flops(p.precision));

  // Memory per GPU.
  p.memory = rank_memory(static_cast<int64_t>(params), p.info.activation_bytes(), static_cast<int>(l.world), l.zero,
                         p.precision != "fp32", static_cast<int64_t>(experts), l.ep);
  if (o.shard_expert_weights && l.ep > 1) {
    const double others = experts * (1 - 1 / static_cast<double>(l.ep));
    p.memory.params -= 4 * others;
    p.memory.grads -= 4 * others;
    if (p.memory.compute_copy > 0) p.memory.compute_copy -= 2 * others;
  }
  p.memory_limit = hw.memory_gib * 1024.0 * 1024.0 * 1024.0;
  return p;
}

std::string format_train_plan(const TrainPlan& p, const HardwareProfile& hw) {
  const PlanLayout& l = p.layout;
  std::string s;
  char buf[512];
  std::snprintf(buf, sizeof buf, "hardware: %s (TFLOP/s: bf16 %s, fp8 %s, fp32 %s; %.0f GiB at %.0f GB/s; links %.4g GB/s "
                                 "within a node of %" PRId64 ", %.4g GB/s between nodes)\n",
                hw.name.c_str(), fmt("%.4g", hw.peak_bf16_tflops).c_str(), fmt("%.4g", hw.peak_fp8_tflops).c_str(),
                fmt("%.4g", hw.peak_fp32_tflops).c_str(), hw.memory_gib, hw.memory_gbps, hw.intra_gbps,
                hw.gpus_per_node, hw.inter_gbps);
  s += buf;
  const std::string limit = p.route.n_group > 1 ? ", each token's experts in the best " +
                                                     std::to_string(p.route.topk_group) + " of " +
                                                     std::to_string(p.route.n_group) + " expert groups"
                                               : "";
  std::snprintf(buf, sizeof buf, "layout: %s; precision %s, dispatch %s%s\n", l.str().c_str(), p.precision.c_str(),
                p.dispatch_dtype.c_str(), limit.c_str());
  s += buf;
  std::snprintf(buf, sizeof buf,
                "step: %" PRId64 " sequences x %" PRId64 " tokens per GPU = %s tokens per step; %s FLOP per token "
                "(6 x active + causal attention; MODEL.md)\n\n",
                p.micro_batch, p.seq_len, human_count(static_cast<double>(p.tokens_per_gpu * l.world)).c_str(),
                human_count(p.flops_per_token).c_str());
  s += buf;
  s += fmt("compute per step (matmuls at %.0f%% of peak, attention ", hw.compute_efficiency * 100) +
       fmt("%.0f%%, memory at ", hw.attention_efficiency * 100) + fmt("%.0f%% of bandwidth):\n", hw.memory_efficiency * 100);
  const double total = p.step_s;
  for (int i = 0; i < kNumPhases; ++i) {
    const double t = p.seconds[static_cast<size_t>(i)];
    if (t <= 0) continue;
    const char* name = i == static_cast<int>(Phase::NormElementwise) ? "norms/elementwise/permute/loss"
                       : i == static_cast<int>(Phase::CommWait)      ? "communication (exposed)"
                                                                     : phase_name(static_cast<Phase>(i));
    std::snprintf(buf, sizeof buf, "  %-32s %10s  %5.1f%%\n", name, human_seconds(t).c_str(), 100 * t / total);
    s += buf;
  }
  if (!p.comms.empty()) {
    s += "\ncommunication per step per GPU (link bytes sent; time at link_efficiency):\n";
    std::snprintf(buf, sizeof buf, "  %-52s %8s %12s %12s %10s\n", "collective", "calls", "intra-node", "inter-node", "time");
    s += buf;
    for (const PlanComm& c : p.comms) {
      std::snprintf(buf, sizeof buf, "  %-52s %8.0f %12s %12s %10s\n", c.what.c_str(), c.calls,
                    human_bytes(c.bytes[0]).c_str(), human_bytes(c.bytes[1]).c_str(), human_seconds(c.seconds).c_str());
      s += buf;
    }
    if (p.ep_s > 0) {
      std::snprintf(buf, sizeof buf, "  EP: a token reaches %.2f nodes and sends %.2f rows to other ranks (uniform routing)\n",
                    p.ep_nodes_per_token, p.ep_rows_per_token);
      s += buf;
    }
    std::snprintf(buf, sizeof buf, "  exposed: data parallel %s of %s (buckets during backward), expert parallel %s of "
                                   "%s (%s without overlap)\n",
                  human_seconds(p.dp_exposed_s).c_str(), human_seconds(p.dp_s).c_str(),
                  human_seconds(p.ep_exposed_s).c_str(), human_seconds(p.ep_s).c_str(),
                  human_seconds(p.ep_serial_exposed_s).c_str());
    s += buf;
  }
  std::snprintf(buf, sizeof buf, "\npredicted: %s per step (%s without any overlap), %s tokens/s, MFU %.1f%% of the %s peak\n",
                human_seconds(p.step_s).c_str(), human_seconds(p.step_no_overlap_s).c_str(),
                human_count(p.tokens_per_s).c_str(), 100 * p.mfu, p.precision.c_str());
  s += buf;
  s += "memory per GPU: " + format_rank_memory(p.memory, static_cast<int>(l.world), l.zero, l.ep).substr(13) + " of " +
       human_bytes(p.memory_limit) + (p.fits() ? ": fits\n" : ": DOES NOT FIT\n");
  return s;
}

std::vector<TrainPlan> sweep_training(const Model& model, int64_t seq_len, const HardwareProfile& hw,
                                      const PlanOptions& o, const DistConfig& dist) {
  const ModelConfig& cfg = model.config();
  PlanOptions base = o;
  const PlanLayout world = plan_layout(cfg, hw, base);
  std::vector<TrainPlan> plans;
  for (int64_t ep = 1; ep <= world.world; ++ep) {
    if (world.world % ep || (ep > 1 && (cfg.ffn != FfnKind::MoE || cfg.n_routed_experts % ep))) continue;
    if (ep > 1 && ep % world.per_node && world.per_node % ep) continue;
    for (int64_t zero : {0, 1}) {
      if (zero && world.world == 1) continue;
      PlanOptions v = o;
      v.gpus = world.world, v.nodes = world.nodes, v.dp = 0, v.ep = ep, v.zero = zero;
      try {
        plans.push_back(plan_training(model, seq_len, hw, v, dist));
      } catch (const Error&) {
        // A layout the model's routing cannot use (its expert groups straddle the EP ranks).
      }
    }
  }
  if (plans.empty()) {  // nothing the machine and the model can do: the one-EP plan says why
    PlanOptions v = o;
    v.gpus = world.world, v.nodes = world.nodes, v.dp = 0, v.ep = 1;
    plan_training(model, seq_len, hw, v, dist);
  }
  std::stable_sort(plans.begin(), plans.end(), [](const TrainPlan& a, const TrainPlan& b) {
    if (a.fits() != b.fits()) return a.fits();
    if (a.fits()) return a.tokens_per_s > b.tokens_per_s;
    return a.memory.total() < b.memory.total();
  });
  return plans;
}

std::string format_sweep(const std::vector<TrainPlan>& plans) {
  std::string s;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-6s %-6s %-5s %12s %10s %12s %7s %12s  %s\n", "DP", "EP", "ZeRO", "memory/GPU",
                "step", "tokens/s", "MFU", "exposed comm", "fits");
  s += buf;
  for (const TrainPlan& p : plans) {
    std::snprintf(buf, sizeof buf, "%-6" PRId64 " %-6" PRId64 " %-5" PRId64 " %12s %10s %12s %6.1f%% %12s  %s\n",
                  p.layout.dp, p.layout.ep, p.layout.zero, human_bytes(p.memory.total()).c_str(),
                  human_seconds(p.step_s).c_str(), human_count(p.tokens_per_s).c_str(), 100 * p.mfu,
                  human_seconds(p.dp_exposed_s + p.ep_exposed_s).c_str(), p.fits() ? "yes" : "no");
    s += buf;
  }
  return s;
}

DecodePlan plan_decode(const Model& model, const HardwareProfile& hw, const PlanOptions& o, int64_t seq_len) {
  const ModelConfig& cfg = model.config();
  DecodePlan p;
  p.layout = plan_layout(cfg, hw, o);
  const PlanLayout& l = p.layout;
  MOELAB_CHECK(o.batch >= 1, "--batch ", o.batch, " must be >= 1");
  p.batch = o.batch;
  p.context = o.context > 0 ? o.context : seq_len;
  p.seqs_per_gpu = static_cast<double>(p.batch) / static_cast<double>(l.world);
  const std::string precision = resolve_precision(o.precision, hw);
  const double w = dtype_bytes(precision == "fp32" ? "f32" : precision);
  const ModelInfo info = model_info(model, 1, 1, DType::BF16);
  const int64_t L = cfg.num_hidden_layers;
  p.kv_bytes_per_token = info.kv_bytes * L;
  p.kv_mha_bytes_per_token = info.kv_bytes_mha * L;

  // Weights read per step: everything a token uses but the routed experts and the embedding (a lookup)
  // and the MTP modules (not used at inference); the routed experts this rank owns that any of the
  // EP group's tokens picks.
  const int64_t trunk_moe = cfg.ffn == FfnKind::MoE ? std::max<int64_t>(0, L - cfg.first_k_dense_replace) : 0;
  // (Tied embeddings: the table is the head, which every token reads.)
  const double lookup = cfg.tie_word_embeddings ? 0 : static_cast<double>(info.embedding.active);
  const double dense =
      static_cast<double>(info.params.active - info.routed_experts.active - info.mtp.active) - lookup;
  const double E = static_cast<double>(cfg.n_routed_experts), K = static_cast<double>(cfg.num_experts_per_tok);
  const double expert_params = 3.0 * static_cast<double>(cfg.hidden_size * cfg.moe_intermediate_size);
  const double group_tokens = static_cast<double>(p.batch) / static_cast<double>(l.dp);
  const double hit = trunk_moe ? E / static_cast<double>(l.ep) * (1 - std::pow(1 - K / E, group_tokens)) : 0;
  p.weight_bytes = w * (dense + static_cast<double>(trunk_moe) * hit * expert_params);
  p.kv_bytes = p.seqs_per_gpu * static_cast<double>(p.context * p.kv_bytes_per_token);
  p.memory_s = (p.weight_bytes + p.kv_bytes) / (hw.memory_gbps * 1e9 * hw.memory_efficiency);

  // FLOPs per new token: 2 x active matmul parameters, and attention over the context (MLA with the
  // up-projections absorbed: scores over the latent and the rope key, values in the latent).
  const double matmuls = 2.0 * (static_cast<double>(info.params.active - info.mtp.active) - lookup);
  const AttentionDims& a = info.attention_dims;
  const double ctx = static_cast<double>(p.context), H = static_cast<double>(a.heads);
  const double attention = cfg.attention == AttentionKind::MLA
      ? 2.0 * ctx * H * static_cast<double>(2 * cfg.kv_lora_rank + cfg.qk_rope_head_dim)
      : 2.0 * ctx * H * static_cast<double>(a.qk_dim + a.v_dim);
  const double peak = hw.peak_flops(precision);
  p.compute_s = p.seqs_per_gpu * (matmuls / (peak * hw.compute_efficiency) +
                                  static_cast<double>(L) * attention /
                                      (hw.peak_flops(precision == "fp8" ? "bf16" : precision) * hw.attention_efficiency));

  // EP: per MoE layer a dispatch (fp8 rows with their scales) and a combine (bf16 rows), two hops across nodes.
  if (l.ep > 1 && trunk_moe > 0) {
    const Link intra = effective(hw.intra_gbps, hw.intra_latency_us, hw.link_efficiency);
    const Link inter = effective(hw.inter_gbps, hw.inter_latency_us, hw.link_efficiency);
    const ModelConfig::RouteGroups g = plan_route_groups(cfg, o.max_nodes_per_token, l.ep_nodes);
    const RouteSpread r =
        route_spread(cfg.n_routed_experts, cfg.num_experts_per_tok, l.ep, l.ep_nodes, g.n_group, g.topk_group);
    const double pn = static_cast<double>(l.ep_per_node), nn = static_cast<double>(l.ep_nodes);
    const double direct = (pn - 1) * r.rank, remote = (nn - 1) * r.node, forwards = (nn - 1) * (pn - 1) * r.rank;
    const double fp8_row = wire_row_bytes(cfg.hidden_size, "fp8"), bf16_row = 2.0 * static_cast<double>(cfg.hidden_size);
    const double t = p.seqs_per_gpu;
    auto way = [&](double first_row) {
      return hop_seconds(t * direct * first_row, t * remote * first_row, intra, inter) +
             (forwards > 0 ? intra.seconds(t * forwards * bf16_row) : 0);
    };
    const double layers = static_cast<double>(trunk_moe);
    p.comm_s = layers * (way(fp8_row) + way(bf16_row));
    p.comm_bytes[0] = layers * t * (direct * (fp8_row + bf16_row) + 2 * forwards * bf16_row);
    p.comm_bytes[1] = layers * t * remote * (fp8_row + bf16_row);
  }
  const double local = std::max(p.memory_s, p.compute_s);
  p.token_s = local + p.comm_s;
  p.token_overlap_s = std::max(local, p.comm_s);
  p.tokens_per_s = static_cast<double>(p.batch) / p.token_s;
  const double all_weights = static_cast<double>(info.params.total - info.mtp.total);
  const double experts = static_cast<double>(info.routed_experts.total);
  p.memory_per_gpu = w * (all_weights - experts + experts / static_cast<double>(l.ep)) + p.kv_bytes;
  p.memory_limit = hw.memory_gib * 1024.0 * 1024.0 * 1024.0;
  return p;
}

std::string format_decode_plan(const DecodePlan& p, const HardwareProfile& hw) {
  std::string s;
  char buf[512];
  std::snprintf(buf, sizeof buf, "decode on %s: %s; batch %" PRId64 " sequences (%.4g per GPU) at context %" PRId64 "\n\n",
                hw.name.c_str(), p.layout.str().c_str(), p.batch, p.seqs_per_gpu, p.context);
  s += buf;
  std::snprintf(buf, sizeof buf,
                "KV cache (bf16, all layers): %s per token, %s per sequence of %" PRId64 " tokens; MHA with the same heads: "
                "%s per token (%.1fx)\n",
                human_bytes(static_cast<double>(p.kv_bytes_per_token)).c_str(),
                human_bytes(static_cast<double>(p.kv_bytes_per_token * p.context)).c_str(), p.context,
                human_bytes(static_cast<double>(p.kv_mha_bytes_per_token)).c_str(),
                static_cast<double>(p.kv_mha_bytes_per_token) / static_cast<double>(p.kv_bytes_per_token));
  s += buf;
  std::snprintf(buf, sizeof buf,
                "per output token, per GPU: reads %s of weights + %s of KV cache = %s at %.0f%% of %.0f GB/s; "
                "compute %s\n",
                human_bytes(p.weight_bytes).c_str(), human_bytes(p.kv_bytes).c_str(), human_seconds(p.memory_s).c_str(),
                hw.memory_efficiency * 100, hw.memory_gbps, human_seconds(p.compute_s).c_str());
  s += buf;
  if (p.comm_s > 0) {
    std::snprintf(buf, sizeof buf, "EP dispatch (fp8) + combine (bf16) all-to-alls: %s per token (%s intra-node, %s "
                                   "inter-node sent per GPU)\n",
                  human_seconds(p.comm_s).c_str(), human_bytes(p.comm_bytes[0]).c_str(), human_bytes(p.comm_bytes[1]).c_str());
    s += buf;
  }
  std::snprintf(buf, sizeof buf,
                "predicted: %s per output token (%s with the all-to-alls hidden behind a second micro-batch), %s "
                "tokens/s in total, %.1f tokens/s per sequence\n",
                human_seconds(p.token_s).c_str(), human_seconds(p.token_overlap_s).c_str(),
                human_count(p.tokens_per_s).c_str(), 1 / p.token_s);
  s += buf;
  std::snprintf(buf, sizeof buf, "memory per GPU: %s (weights, experts 1/%" PRId64 ", + KV cache) of %s: %s\n",
                human_bytes(p.memory_per_gpu).c_str(), p.layout.ep, human_bytes(p.memory_limit).c_str(),
                p.memory_per_gpu <= p.memory_limit ? "fits" : "DOES NOT FIT");
  s += buf;
  return s;
}

}  // namespace moelab
