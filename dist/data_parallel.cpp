// DataParallel (dist/data_parallel.h): buckets, their reductions, ZeRO-1's slices and gathers.
#include "dist/data_parallel.h"

#include <algorithm>
#include <cstring>

#include "core/ops/grad_norm.h"

namespace moelab::dist {

DataParallel::DataParallel(Comm& comm, Comm& host, const ParamBuffer& params, const DataParallelConfig& cfg,
                           const ExpertShards* experts)
    : comm_(comm), host_(host), params_(params), cfg_(cfg) {
  MOELAB_CHECK(host.size() == comm.size() && host.rank() == comm.rank(), "DataParallel: the host group (rank ",
               host.rank(), " of ", host.size(), ") is not the data-parallel group (rank ", comm.rank(), " of ",
               comm.size(), ")");
  MOELAB_CHECK(cfg_.zero == 0 || cfg_.zero == 1, "dist.zero = ", cfg_.zero, " (expected 0 or 1)");
  MOELAB_CHECK(cfg_.bucket_bytes >= 1024, "dist.bucket_mb gives ", cfg_.bucket_bytes,
               " bytes per bucket (expected at least 1 kB)");
  MOELAB_CHECK(params.flat_grads().defined() && params.flat_grads().dtype() == DType::F32,
               "DataParallel: the parameters need an f32 gradient buffer");
  const int64_t n = params.numel_padded(), per = std::max<int64_t>(1, cfg_.bucket_bytes / 4);
  const int N = comm.size(), r = comm.rank();
  if (experts != nullptr && !experts->layers.empty()) {
    experts_ = *experts;
    MOELAB_CHECK(experts_.group != nullptr && experts_.replicas != nullptr &&
                     experts_.group->size() * experts_.replicas->size() == N,
                 "DataParallel: the expert-parallel group and its replicas do not tile the ", N, " ranks");
    const int ep = experts_.group->size(), er = experts_.group->rank();
    for (const std::vector<FlatRange>& layer : experts_.layers) {
      const auto E = static_cast<int64_t>(layer.size()), mine = E / ep;
      MOELAB_CHECK(E > 0 && E % ep == 0, "DataParallel: ", E, " experts do not split over ", ep, " ranks");
      for (int64_t e = 0; e + 1 < E; ++e)
        MOELAB_CHECK(layer[e].end == layer[e + 1].begin, "DataParallel: the experts of a layer are not contiguous");
      MOELAB_CHECK(expert_blocks_.empty() || expert_blocks_.back().end <= layer[0].begin,
                   "DataParallel: the MoE layers' experts are not in flat-buffer order");
      expert_blocks_.push_back({layer[0].begin, layer[E - 1].end});
      local_experts_.push_back({layer[er * mine].begin, layer[(er + 1) * mine - 1].end});
    }
  }
  // The buffer as runs from its end: dense stretches (reduced over everybody) and, in each MoE
  // layer, this rank's experts (over the replicas); the other ranks' experts are skipped.
  struct Run {
    FlatRange range;
    int64_t layer;  // -1: dense
  };
  std::vector<Run> runs;
  int64_t end = n;
  for (auto l = static_cast<int64_t>(expert_blocks_.size()) - 1; l >= 0; --l) {
    if (expert_blocks_[l].end < end) runs.push_back({{expert_blocks_[l].end, end}, -1});
    runs.push_back({local_experts_[l], l});
    end = expert_blocks_[l].begin;
  }
  if (end > 0) runs.push_back({{0, end}, -1});
  for (const Run& run : runs)
    for (int64_t e = run.range.end; e > run.range.begin; e -= per) {
      Bucket b;
      b.range = {std::max(run.range.begin, e - per), e};
      b.experts = run.layer >= 0;
      b.layer = run.layer;
      const int64_t len = b.range.size();
      for (int k = 0; k < N; ++k) b.counts.push_back(len * (k + 1) / N - len * k / N);
      b.mine = {b.range.begin + len * r / N, b.range.begin + len * (r + 1) / N};
      buckets_.push_back(std::move(b));
    }
  // What this rank updates, by offset; adjacent ranges with the same copies merge (one range, the
  // whole buffer, without expert parallelism and ZeRO).
  for (auto it = buckets_.rbegin(); it != buckets_.rend(); ++it) {
    OwnedRange o;
    static_cast<FlatRange&>(o) = it->experts || cfg_.zero == 0 ? it->range : it->mine;
    o.copies = it->experts ? experts_.replicas->size() : cfg_.zero == 0 ? N : 1;
    if (o.size() == 0) continue;
    if (!owned_.empty() && owned_.back().end == o.begin && owned_.back().copies == o.copies) owned_.back().end = o.end;
    else owned_.push_back(o);
  }
}

void DataParallel::start(Bucket& b) {
  const Tensor g = params_.flat_grads().slice(b.range.begin, b.range.end);
  if (b.experts && experts_.replicas->size() == 1) return;  // nobody else holds these experts
  const CudaEvent* ready = nullptr;
  if (g.device() == Device::CUDA) {  // the kernels that wrote this bucket are queued: mark the point
    if (!b.ready) b.ready = std::make_unique<CudaEvent>();
    b.ready->record();
    ready = b.ready.get();
  }
  if (b.experts) {  // the sum over the replicas; finish_grads divides by the world
    b.work = experts_.replicas->all_reduce_async(g, ReduceOp::Sum, ready);
  } else if (cfg_.zero == 0) {
    b.work = comm_.all_reduce_async(g, ReduceOp::Average, ready);
  } else {
    const Tensor out = params_.flat_grads().slice(b.mine.begin, b.mine.end);
    b.work = comm_.reduce_scatter_async(g, out, b.counts, ReduceOp::Average, ready);
  }
}

void DataParallel::grads_ready(const Exec&, int64_t offset) {
  // Buckets are in backward's order: start each one that lies wholly in the finished tail.
  while (next_ < buckets_.size() && buckets_[next_].range.begin >= offset) start(buckets_[next_++]);
}

void DataParallel::finish_grads(const Exec& ex) {
  grads_ready(ex, 0);  // a backward that never reported (or a step without one) still reduces all
  std::vector<Tensor> expert_grads;
  for (Bucket& b : buckets_) {
    if (b.work) b.work->wait();
    b.work.reset();
    if (b.experts) expert_grads.push_back(params_.flat_grads().slice(b.range.begin, b.range.end));
  }
  // An expert's gradient: the sum over its holders' tokens -> the mean over the global batch.
  if (!expert_grads.empty()) scale_grads(ex, expert_grads, 1.0 / comm_.size());
  next_ = 0;
}

void DataParallel::sum(std::vector<double>& values) { host_.all_reduce(values, ReduceOp::Sum); }
void DataParallel::sum(const Exec&, const Tensor& values) { comm_.all_reduce(values, ReduceOp::Sum); }

void DataParallel::gather_params(const Exec&) {
  if (cfg_.zero == 0) return;
  const Tensor& p = params_.flat_params();
  std::vector<WorkHandle> works;
  for (const Bucket& b : buckets_)
    if (!b.experts)
      works.push_back(comm_.all_gather_async(p.slice(b.mine.begin, b.mine.end), p.slice(b.range.begin, b.range.end),
                                             b.counts));
  for (WorkHandle& w : works) w->wait();
  // The bf16 copy of the slices other ranks updated (the owned ones were written by AdamW and get
  // the same rounding again).
  params_.sync_compute_copy();
}

void DataParallel::broadcast_from_rank0(const ParamBuffer& buffers) {
  comm_.broadcast(params_.flat_params(), 0);
  params_.sync_compute_copy();
  if (buffers.allocated()) comm_.broadcast(buffers.flat_params(), 0);
}

namespace {
// FNV-1a over the bytes of a CPU copy (a checkpoint-time check: speed matters little).
uint64_t fnv1a(const Tensor& t, uint64_t h) {
  if (!t.defined()) return h;
  const Tensor host = t.device() == Device::CPU ? t : t.to(Device::CPU);
  const auto* p = static_cast<const unsigned char*>(host.raw());
  for (size_t i = 0; i < host.nbytes(); ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
}  // namespace

void DataParallel::check_identical(const ParamBuffer& buffers, const std::string& when) {
  uint64_t h = fnv1a(params_.flat_params(), 1469598103934665603ull);
  if (buffers.allocated()) h = fnv1a(buffers.flat_params(), h);
  const int N = host_.size();
  Tensor mine = Tensor::empty({2}, DType::I32), all = Tensor::empty({2 * N}, DType::I32);
  std::memcpy(mine.raw(), &h, sizeof h);
  host_.all_gather(mine, all, std::vector<int64_t>(static_cast<size_t>(N), 2));
  const auto* hashes = static_cast<const uint64_t*>(all.raw());
  std::string differ;
  for (int r = 1; r < N; ++r)
    if (hashes[r] != hashes[0]) differ += (differ.empty() ? "" : ", ") + std::to_string(r);
  MOELAB_CHECK(differ.empty(), "data parallel: the parameters of rank(s) ", differ, " differ from rank 0's ", when,
               " (the ranks must take identical steps: a non-deterministic reduction or a rank that skipped one)");
}

std::vector<int64_t> DataParallel::expert_counts(size_t layer) const {
  const std::vector<FlatRange>& experts = experts_.layers[layer];
  const int ep = experts_.group->size();
  const size_t mine = experts.size() / static_cast<size_t>(ep);
  std::vector<int64_t> counts;
  for (size_t q = 0; q < static_cast<size_t>(ep); ++q)
    counts.push_back(experts[(q + 1) * mine - 1].end - experts[q * mine].begin);
  return counts;
}

void DataParallel::complete_params() {
  const Tensor& p = params_.flat_params();
  std::vector<WorkHandle> works;
  for (size_t l = 0; l < expert_blocks_.size(); ++l)
    works.push_back(experts_.group->all_gather_async(p.slice(local_experts_[l].begin, local_experts_[l].end),
                                                     p.slice(expert_blocks_[l].begin, expert_blocks_[l].end),
                                                     expert_counts(l)));
  for (WorkHandle& w : works) w->wait();
  if (!works.empty()) params_.sync_compute_copy();
}

Tensor DataParallel::gather_full(const Tensor& shard) {
  const int N = comm_.size();
  if (owned_.size() == 1 && owned_[0].begin == 0 && owned_[0].end == params_.numel_padded() && owned_[0].copies == N)
    return shard;  // every rank owns everything
  // Where each owned range starts in the shard (they lie there one after the other).
  std::vector<int64_t> at;
  int64_t total = 0;
  for (const OwnedRange& o : owned_) {
    at.push_back(total);
    total += o.size();
  }
  MOELAB_CHECK(shard.numel() == total, "gather_full: ", shard.str(), " is not laid out like this rank's ", total,
               "-element shard");
  auto in_shard = [&](const FlatRange& r) {  // the shard's elements of flat range r (inside one owned range)
    if (r.size() == 0) return shard.slice(0, 0);
    const auto it = std::upper_bound(owned_.begin(), owned_.end(), r.begin,
                                     [](int64_t x, const OwnedRange& o) { return x < o.begin; });
    MOELAB_CHECK(it != owned_.begin() && r.end <= std::prev(it)->end, "gather_full: [", r.begin, ", ", r.end,
                 ") is not owned by this rank");
    const size_t i = static_cast<size_t>(std::prev(it) - owned_.begin());
    const int64_t from = at[i] + (r.begin - owned_[i].begin);
    return shard.slice(from, from + r.size());
  };
  const Tensor full = Tensor::zeros({params_.numel_padded()}, shard.dtype(), shard.device());
  std::vector<WorkHandle> works;
  for (const Bucket& b : buckets_) {
    if (b.experts) continue;
    if (cfg_.zero == 0) full.slice(b.range.begin, b.range.end).copy_from(in_shard(b.range));
    else works.push_back(comm_.all_gather_async(in_shard(b.mine), full.slice(b.range.begin, b.range.end), b.counts));
  }
  for (size_t l = 0; l < expert_blocks_.size(); ++l)
    works.push_back(experts_.group->all_gather_async(in_shard(local_experts_[l]),
                                                     full.slice(expert_blocks_[l].begin, expert_blocks_[l].end),
                                                     expert_counts(l)));
  for (WorkHandle& w : works) w->wait();
  return full;
}

}  // namespace moelab::dist
