// The processes of a run (DESIGN.md, "Distributed"): how `moelab train` and `moelab bench` join the
// others mpirun (or srun) started. One process (no launcher) needs none of it and gets no
// communicator; N processes get the world group and the data-parallel reduction over it.
//
//   mpirun -np N moelab train --config X       rank and size from the launcher's environment
//
// The dist keys (train/run_config.h's DistConfig) pick the backend (auto: NCCL for CUDA tensors
// when built with it, MPI otherwise), the emulated nodes and links, ZeRO-1, the bucket size and the
// timeout. MPI itself is started by main (dist::MpiSession) before any command runs.
#pragma once

#include <memory>
#include <string>

#include "core/nn/model.h"
#include "dist/backends.h"
#include "dist/data_parallel.h"
#include "dist/ep_dispatch.h"
#include "train/run_config.h"

namespace moelab {

struct Processes {
  dist::WorldInfo world;                   // rank 0 of 1 without a launcher
  std::unique_ptr<dist::Comm> host;        // MPI world group (null on one process)
  std::unique_ptr<dist::Comm> device;      // NCCL world group when the backend is nccl (else null)
  std::unique_ptr<dist::DataParallel> dp;  // the gradient reduction (null on one process)
  std::unique_ptr<dist::Comm> ep_group;    // dist.ep > 1: this rank's expert-parallel group (MPI)
  std::unique_ptr<dist::EPDispatch> ep;    // the model's MoE layers dispatch through it
  // dist.ep > 1, on the parameters' backend (NCCL or MPI): the EP group again (gathers of the
  // experts) and the ranks holding the same experts (their gradients' reduction).
  std::unique_ptr<dist::Comm> ep_params, ep_replicas;

  bool leader() const { return world.rank == 0; }
  int size() const { return world.size; }
  GradSync* sync() const { return dp.get(); }
  // What this rank's optimizer updates (empty: everything).
  std::vector<FlatRange> owned() const { return dp ? as_flat(dp->owned()) : std::vector<FlatRange>{}; }
  // "" on one process, else " (rank 1 of 4)": for messages.
  std::string tag() const;
};

// The communicator options of the dist keys: timeout, emulated nodes, the link preset with the
// explicit bandwidths and latencies over it.
dist::CommOptions comm_options(const DistConfig& d);

// On CUDA, one GPU per process: the local rank's (before the runtime allocates anything). Throws
// when there are fewer GPUs than processes on the node and the backend is NCCL.
void pick_device(const DistConfig& d, const std::string& device);

// This process's place; with several, the world groups and the data-parallel reduction over the
// model's parameters (rank 0's parameters and buffers are broadcast so that every rank starts
// identical), and with dist.ep > 1 the expert-parallel groups: world ranks [g ep, (g + 1) ep) form
// group g and split the experts (dist/ep_dispatch.h), which the model's MoE layers then use. Every
// rank keeps every expert's weights in its parameter buffer (checkpoints, export and sampling read
// them after DataParallel::complete_params), but computes, reduces, updates and keeps optimizer
// state only for its own (dist/data_parallel.h, "Expert parallelism").
Processes join_processes(const DistConfig& d, Device device, Model& model);

// Each process's share of a global batch of `global` sequences (checked: N divides it).
int64_t per_rank_batch(int64_t global, int ranks, const char* key);

// What one of `ranks` data-parallel processes holds, in bytes: the f32 parameters (whole on every
// process: the forward reads them), their f32 gradients (whole: backward writes all of them before
// the reduction), the bf16 compute copy (mixed precision), AdamW's m and v (ZeRO-1: a 1/ranks
// shard of the dense weights; expert parallelism: only this process's 1/ep of the routed experts),
// and the activation arena for its share of the batch (train/model_info.h's prediction).
// expert_elements: the routed experts' share of padded_params (Model::expert_elements).
struct RankMemory {
  double params = 0, grads = 0, compute_copy = 0, optimizer = 0, activations = 0;
  double total() const { return params + grads + compute_copy + optimizer + activations; }
};
RankMemory rank_memory(int64_t padded_params, double activation_bytes, int ranks, int64_t zero, bool compute_copy,
                       int64_t expert_elements = 0, int64_t ep = 1);
// "per process: parameters 8.6 MB + gradients 8.6 MB + AdamW m, v 8.6 MB (ZeRO-1, 1/2) + activations
// 141 MB = 167 MB"
std::string format_rank_memory(const RankMemory& m, int ranks, int64_t zero, int64_t ep = 1);

}  // namespace moelab
