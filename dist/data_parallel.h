// Data parallelism (DESIGN.md, "Distributed"): every rank holds the whole model and trains on its
// slice of the global batch; the gradients are averaged over the ranks before the update, so every
// rank takes the same step. DataParallel is the GradSync (core/nn/grad_sync.h) that train/step runs.
//
// Buckets. The flat gradient buffer [numel_padded] is cut into buckets of bucket_bytes from its END
// (backward finishes the end first): bucket 0 = the last bucket_bytes, bucket 1 the ones before, ...
// When backward reports that the gradients from `offset` on are final, every bucket lying wholly
// there starts its reduction on the communication thread, and backward goes on computing: the
// reduction of the late layers hides behind the backward of the early ones. finish_grads() waits for
// the rest; the time it waits is the exposed communication.
//
// zero = 0: each bucket is all-reduced (mean); every rank updates everything.
// zero = 1 (ZeRO stage 1): each bucket is reduce-scattered (mean): rank r of N receives the r-th of N
//   near-equal slices of every bucket, and owns those slices: its optimizer keeps m and v only for
//   them (1/N of the optimizer state) and updates only them; gather_params() then all-gathers every
//   bucket's updated slices, so every rank holds the whole updated model again. The gradient norm is
//   each rank's sum of squares over its slices, summed over the ranks. Parameters stay whole on
//   every rank: they are what the forward reads (on the GPU the f32 master feeds the norms and the
//   router besides the bf16 copy), so sharding them would be ZeRO-3, a different trade.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "core/nn/grad_sync.h"
#include "core/params.h"
#include "dist/comm.h"

namespace moelab::dist {

struct DataParallelConfig {
  int64_t bucket_bytes = 4 << 20;  // gradient bytes per bucket (f32)
  int zero = 0;                    // 0: replicated optimizer; 1: ZeRO-1 (sharded m and v)
};

// Which flat ranges are routed experts and who holds them (see above). Not owned.
struct ExpertShards {
  std::vector<std::vector<FlatRange>> layers;  // [MoE layer][expert]: contiguous, in expert order
  Comm* group = nullptr;     // the expert-parallel group (parameters' backend): rank r holds experts
                             // [r E/ep, (r + 1) E/ep) of every layer
  Comm* replicas = nullptr;  // the world ranks holding the same experts as this one (parameters' backend)
};

class DataParallel final : public GradSync {
 public:
  // comm: the data-parallel group for the parameters' tensors (MPI, or NCCL for CUDA tensors);
  // host: the same ranks over MPI, for host values (sum()); params: the model's flat buffers (f32
  // gradients); experts: expert parallelism's layout (null: none).
  DataParallel(Comm& comm, Comm& host, const ParamBuffer& params, const DataParallelConfig& cfg,
               const ExpertShards* experts = nullptr);

  void grads_ready(const Exec& ex, int64_t offset) override;
  void finish_grads(const Exec& ex) override;
  const std::vector<OwnedRange>& owned() const override { return owned_; }
  void sum(std::vector<double>& values) override;
  void sum(const Exec& ex, const Tensor& values) override;
  void gather_params(const Exec& ex) override;
  int ranks() const override { return comm_.size(); }

  // Rank 0's parameters and buffers to every rank (the start of a run: whatever each rank
  // initialised or loaded, they train the same model).
  void broadcast_from_rank0(const ParamBuffer& buffers);
  // Throws when the ranks' parameters and buffers are not bit-identical (a 64-bit hash of each
  // rank's, compared on every rank), naming the ranks that differ from rank 0 and `when`. Data
  // parallelism is only correct while they agree; the trainer checks at every checkpoint.
  void check_identical(const ParamBuffer& buffers, const std::string& when);
  // A tensor laid out like owned() (the optimizer's m or v) gathered into the full flat layout
  // [numel_padded] on every rank (for a checkpoint); when every rank owns everything: the tensor itself.
  Tensor gather_full(const Tensor& shard);
  // Expert parallelism: every rank's parameters whole again (the other EP ranks' experts gathered);
  // without it nothing to do. Every rank must call it.
  void complete_params();

  const DataParallelConfig& config() const { return cfg_; }
  Comm& comm() { return comm_; }
  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }

 private:
  struct Bucket {
    FlatRange range;
    bool experts = false;         // this rank's routed experts: reduced over the replicas
    int64_t layer = -1;           // experts: the MoE layer
    std::vector<int64_t> counts;  // zero = 1: each rank's slice of the bucket
    FlatRange mine;               // zero = 1: this rank's slice
    WorkHandle work;              // the reduction in flight this step (null: not started)
    // CUDA: recorded after the bucket's last gradient kernel; the reduction waits for it alone.
    std::unique_ptr<CudaEvent> ready;
  };
  void start(Bucket& b);
  std::vector<int64_t> expert_counts(size_t layer) const;  // elements of each EP rank's experts

  Comm& comm_;
  Comm& host_;
  const ParamBuffer& params_;
  DataParallelConfig cfg_;
  ExpertShards experts_;             // no layers: no expert parallelism
  std::vector<FlatRange> local_experts_, expert_blocks_;  // per MoE layer: this rank's, everybody's
  std::vector<Bucket> buckets_;      // from the end of the buffer to its start
  std::vector<OwnedRange> owned_;    // sorted by offset
  size_t next_ = 0;                  // the next bucket to start this step
};

}  // namespace moelab::dist
