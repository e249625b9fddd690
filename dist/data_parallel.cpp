// DataParallel (dist/data_parallel.h): buckets, their reductions, ZeRO-1's slices and gathers.
#include "dist/data_parallel.h"

#include <algorithm>
#include <cstring>

namespace moelab::dist {

DataParallel::DataParallel(Comm& comm, Comm& host, const ParamBuffer& params, const DataParallelConfig& cfg)
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
  for (int64_t end = n; end > 0; end -= per) {
    Bucket b;
    b.range = {std::max<int64_t>(0, end - per), end};
    const int64_t len = b.range.size();
    for (int k = 0; k < N; ++k) b.counts.push_back(len * (k + 1) / N - len * k / N);
    b.mine = {b.range.begin + len * r / N, b.range.begin + len * (r + 1) / N};
    buckets_.push_back(std::move(b));
  }
  if (cfg_.zero == 0) {
    owned_ = {FlatRange{0, n}};
  } else {
    for (auto it = buckets_.rbegin(); it != buckets_.rend(); ++it) owned_.push_back(it->mine);
  }
}

void DataParallel::start(Bucket& b) {
  const Tensor g = params_.flat_grads().slice(b.range.begin, b.range.end);
  const CudaEvent* ready = nullptr;
  if (g.device() == Device::CUDA) {  // the kernels that wrote this bucket are queued: mark the point
    if (!b.ready) b.ready = std::make_unique<CudaEvent>();
    b.ready->record();
    ready = b.ready.get();
  }
  if (cfg_.zero == 0) {
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
  for (Bucket& b : buckets_) {
    b.work->wait();
    b.work.reset();
  }
  next_ = 0;
}

void DataParallel::sum(std::vector<double>& values) { host_.all_reduce(values, ReduceOp::Sum); }

void DataParallel::gather_params(const Exec&) {
  if (cfg_.zero == 0) return;
  const Tensor& p = params_.flat_params();
  std::vector<WorkHandle> works;
  for (const Bucket& b : buckets_)
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

Tensor DataParallel::gather_full(const Tensor& shard) {
  if (cfg_.zero == 0) return shard;
  int64_t total = 0;
  for (const FlatRange& r : owned_) total += r.size();
  MOELAB_CHECK(shard.numel() == total, "gather_full: ", shard.str(), " is not laid out like this rank's ", total,
               "-element shard");
  const Tensor full = Tensor::zeros({params_.numel_padded()}, shard.dtype(), shard.device());
  // owned_ runs from the buffer's start, buckets_ from its end: walk the shard from its end.
  int64_t at = total;
  std::vector<WorkHandle> works;
  for (const Bucket& b : buckets_) {
    at -= b.mine.size();
    works.push_back(comm_.all_gather_async(shard.slice(at, at + b.mine.size()), full.slice(b.range.begin, b.range.end),
                                           b.counts));
  }
  for (WorkHandle& w : works) w->wait();
  return full;
}

}  // namespace moelab::dist
