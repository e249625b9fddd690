// train/parallel.h: joining the processes of a run.
#include "train/parallel.h"

#include "core/device.h"

namespace moelab {

std::string Processes::tag() const {
  if (world.size == 1) return "";
  return " (rank " + std::to_string(world.rank) + " of " + std::to_string(world.size) + ")";
}

dist::CommOptions comm_options(const DistConfig& d) {
  dist::CommOptions o;
  o.timeout_s = d.timeout_s;
  o.ranks_per_node = static_cast<int>(d.ranks_per_node);
  o.link = dist::LinkModel::preset(d.link);
  if (d.intra_gbps > 0) o.link.intra = {d.intra_gbps, d.intra_latency_us};
  if (d.inter_gbps > 0) o.link.inter = {d.inter_gbps, d.inter_latency_us};
  return o;
}

namespace {
bool use_nccl(const DistConfig& d, Device device) {
  if (d.backend == "nccl") {
    MOELAB_CHECK(device == Device::CUDA, "dist.backend = nccl needs train.device = cuda (NCCL moves GPU memory)");
    return true;
  }
  return d.backend == "auto" && device == Device::CUDA && dist::nccl_built();
}
}  // namespace

void pick_device(const DistConfig& d, const std::string& device) {
  const dist::WorldInfo w = dist::world_from_environment();
  if (device != "cuda" || w.size == 1 || cuda_device_count() == 0) return;
  const int gpus = cuda_device_count();
  MOELAB_CHECK(d.backend == "mpi" || w.local_rank < gpus, "rank ", w.rank, ": local rank ", w.local_rank, " but only ",
               gpus, " GPUs on this node: NCCL needs one GPU per process (dist.backend = mpi lets processes share one)");
  cuda_set_device(w.local_rank % gpus);
}

Processes join_processes(const DistConfig& d, Device device, Model& model) {
  Processes p;
  p.world = dist::world_from_environment();
  MOELAB_CHECK(d.ep == 1 || p.world.size % d.ep == 0, "dist.ep = ", d.ep, " does not divide the ", p.world.size,
               " processes (world = DP x EP; launch a multiple of dist.ep)");
  const int64_t experts = model.config().n_routed_experts;
  MOELAB_CHECK(d.ep == 1 || (model.config().ffn == FfnKind::MoE && experts % d.ep == 0), "dist.ep = ", d.ep,
               " needs MoE layers whose ", experts, " routed experts split evenly over the group");
  // Node-limited routing assumes the experts' nodes: those the EP group's ranks sit on.
  const int64_t rpn = d.ranks_per_node, ep_nodes = rpn > 0 && d.ep > rpn ? (d.ep + rpn - 1) / rpn : 1;
  MOELAB_CHECK(model.config().max_nodes_per_token == 0 || d.ep == 1 || model.config().expert_nodes == ep_nodes,
               "model.expert_nodes = ", model.config().expert_nodes, " but dist.ep = ", d.ep,
               " with dist.ranks_per_node = ", rpn, " spreads the experts over ", ep_nodes,
               " nodes (node-limited routing routes over the nodes that hold the experts)");
  if (p.world.size == 1) return p;
  dist::CommOptions o = comm_options(d);
  p.host = dist::mpi_world(o);
  if (use_nccl(d, device)) p.device = dist::nccl_world(o, *p.host, p.world.local_rank);
  dist::DataParallelConfig dc;
  dc.bucket_bytes = static_cast<int64_t>(d.bucket_mb * 1e6);
  dc.zero = static_cast<int>(d.zero);
  dist::Comm& params_comm = p.device ? *p.device : *p.host;
  dist::ExpertShards shards;
  if (d.ep > 1) {
    const int ep = static_cast<int>(d.ep), group = p.world.rank / ep, member = p.world.rank % ep;
    p.ep_group = p.host->split(group, p.world.rank, "ep");
    const DType wire = d.dispatch_dtype == "fp8" ? DType::FP8_E4M3 : d.dispatch_dtype == "bf16" ? DType::BF16 : DType::F32;
    p.ep = std::make_unique<dist::EPDispatch>(*p.ep_group, wire, d.overlap == 1);
    model.set_expert_dispatch(p.ep.get());
    p.ep_params = params_comm.split(group, p.world.rank, "ep");
    p.ep_replicas = params_comm.split(member, p.world.rank, "ep-replicas");
    shards = {model.expert_ranges(), p.ep_params.get(), p.ep_replicas.get()};
  }
  p.dp = std::make_unique<dist::DataParallel>(params_comm, *p.host, model.params(), dc, &shards);
  p.dp->broadcast_from_rank0(model.buffers());
  return p;
}

RankMemory rank_memory(int64_t padded_params, double activation_bytes, int ranks, int64_t zero, bool compute_copy,
                       int64_t expert_elements, int64_t ep) {
  RankMemory m;
  const double n = static_cast<double>(padded_params), experts = ep > 1 ? static_cast<double>(expert_elements) : 0;
  m.params = 4 * n;
  m.grads = 4 * n;
  m.compute_copy = compute_copy ? 2 * n : 0;
  m.optimizer = 8 * (n - experts) / (zero == 1 ? ranks : 1) + 8 * experts / static_cast<double>(ep);
  m.activations = activation_bytes;
  return m;
}

std::string format_rank_memory(const RankMemory& m, int ranks, int64_t zero, int64_t ep) {
  using dist::human_bytes;
  std::string s = "per process: parameters " + human_bytes(m.params) + " + gradients " + human_bytes(m.grads);
  if (m.compute_copy > 0) s += " + bf16 copy " + human_bytes(m.compute_copy);
  s += " + AdamW m, v " + human_bytes(m.optimizer);
  if (zero == 1 && ranks > 1) s += " (ZeRO-1: 1/" + std::to_string(ranks) + ")";
  if (ep > 1) s += " (routed experts: 1/" + std::to_string(ep) + ")";
  return s + " + activations " + human_bytes(m.activations) + " = " + human_bytes(m.total());
}

int64_t per_rank_batch(int64_t global, int ranks, const char* key) {
  MOELAB_CHECK(global % ranks == 0, key, " = ", global, " is not divisible by the ", ranks,
               " processes (each takes ", key, " / ", ranks, " sequences of the global batch)");
  return global / ranks;
}

}  // namespace moelab
