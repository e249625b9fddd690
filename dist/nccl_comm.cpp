// The NCCL backend of dist::Comm (dist/comm.h, dist/backends.h): CUDA tensors, one process per GPU.
//
// Bootstrap: rank 0 draws the NCCL unique id and broadcasts its 128 bytes over an MPI group of the
// same ranks; every rank then binds its GPU (cudaSetDevice(local_rank)) and joins with
// ncclCommInitRank. A split is ncclCommSplit, whose member list we derive from an all-gather of the
// colors and keys, because NCCL does not report one.
//
// Each group has its own non-blocking CUDA stream. A collective is issued there by the group's
// communication thread, which then polls the stream until the collective completes, checking
// NCCL's asynchronous error state and the deadline in between; on the deadline the communicator is
// aborted (ncclCommAbort kills the kernels still waiting for a peer), so no rank hangs on a GPU that
// will never finish. NCCL cannot tell which peer is missing, unlike the MPI backend.
//
// Ordering with the caller's computation: moelab's kernels run on the legacy default stream
// (Exec::stream = nullptr), and a collective must not read its buffers before the kernels that
// write them have run. A caller that passes a ready event (DataParallel's gradient buckets: an
// event recorded right after the bucket's last gradient kernel) makes the group's stream wait for
// exactly that, so the reduction overlaps the backward kernels queued after it. Without one, the
// thread waits on the host for everything queued on the default stream so far
// (cudaStreamSynchronize(cudaStreamLegacy)): correct, without overlap. The results are complete
// when Work::wait() returns, since the thread waited for the stream; later kernels on the default
// stream see them.
//
// Limits: NCCL calls that block the host (communicator creation, split, the connection set-up NCCL
// does lazily inside the first collectives) are outside the deadline. Several groups issue from
// their own threads on their own streams, so ranks must issue the collectives of different groups
// that can overlap in a consistent order, as NCCL requires of concurrent communicators.
//
// Dtypes: f32, f64, bf16, i32 and fp8 e4m3 are moved and reduced by NCCL itself (fp8 reductions need
// sm_90); ReduceOp::Average is ncclAvg, for floating-point types only (as in the MPI backend).
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <tuple>

#include "dist/backends.h"

namespace moelab::dist {

namespace {

void cuda_check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  throw Error(std::string(what) + " failed: " + cudaGetErrorString(err));
}
#define CUDA_CHECK(call) cuda_check((call), #call)

void nccl_check(ncclResult_t rc, const char* what) {
  if (rc == ncclSuccess) return;
  std::string msg = std::string(what) + " failed: " + ncclGetErrorString(rc);
  const char* last = ncclGetLastError(nullptr);  // NCCL's own detail of the failure, when it has one
  if (last && *last) msg += " (" + std::string(last) + ")";
  throw CommError(msg);
}
#define NCCL_CHECK(call) nccl_check((call), #call)

#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 24, 0)
constexpr bool kNcclHasFp8 = true;
constexpr ncclDataType_t kNcclFp8 = ncclFloat8e4m3;
#else
constexpr bool kNcclHasFp8 = false;
constexpr ncclDataType_t kNcclFp8 = ncclUint8;  // moved as bytes; NCCL cannot add them
#endif

ncclDataType_t nccl_type(DType t, bool reduce, const char* call) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::I32: return ncclInt32;
    case DType::FP8_E4M3:
      MOELAB_CHECK(kNcclHasFp8 || !reduce, call, ": this NCCL (", NCCL_MAJOR, ".", NCCL_MINOR,
                   ") cannot reduce fp8_e4m3 (NCCL 2.24 or later can)");
      return kNcclFp8;
  }
  throw Error(std::string(call) + ": unknown dtype");
}

ncclRedOp_t nccl_op(ReduceOp op, DType t, const char* call) {
  if (op == ReduceOp::Sum) return ncclSum;
  MOELAB_CHECK(t != DType::I32, call, ": ReduceOp::Average of i32 (an integer mean truncates; average a "
               "floating-point tensor)");
  return ncclAvg;
}

void check_cuda(const char* call, const char* name, const Tensor& t) {
  MOELAB_CHECK(!t.defined() || t.device() == Device::CUDA, call, ": ", name, " is ", t.str(),
               "; the NCCL backend moves CUDA tensors only (dist.backend = mpi takes host tensors)");
}

// The dtype of a collective whose tensors may be undefined where this rank's part is empty.
DType dtype_of(const Tensor& a, const Tensor& b) {
  return a.defined() ? a.dtype() : b.defined() ? b.dtype() : DType::F32;
}

// t's device address `elements` elements in; null for an undefined (empty) tensor.
void* at(const Tensor& t, int64_t elements) {
  if (!t.defined()) return nullptr;
  return static_cast<char*>(t.raw()) + elements * static_cast<int64_t>(dtype_size(t.dtype()));
}

size_t count(int64_t n) { return static_cast<size_t>(n); }

bool all_equal(const std::vector<int64_t>& v) {
  return std::all_of(v.begin(), v.end(), [&](int64_t x) { return x == v.front(); });
}

// Point-to-point calls issued in one NCCL group (so they progress together); the group is closed
// even when issuing one of them fails, or this thread's next NCCL call would join the broken group.
template <typename Issue>
void grouped(Issue&& issue) {
  NCCL_CHECK(ncclGroupStart());
  try {
    issue();
  } catch (...) {
    ncclGroupEnd();
    throw;
  }
  NCCL_CHECK(ncclGroupEnd());
}

// The GPU of this process: local_rank, which must exist (one process per GPU).
int device_for(int local_rank) {
  int n = 0;
  CUDA_CHECK(cudaGetDeviceCount(&n));
  MOELAB_CHECK(local_rank >= 0 && local_rank < n, "nccl_world: local rank ", local_rank, " has no GPU of its own (",
               n, " on this node); NCCL needs one process per GPU (dist.backend = mpi lets ranks share one)");
  return local_rank;
}

// Rank 0's NCCL unique id on every rank of `bootstrap`.
ncclUniqueId shared_unique_id(Comm& bootstrap) {
  static_assert(sizeof(ncclUniqueId) == 32 * sizeof(int32_t), "the id travels as 32 i32 elements");
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  if (bootstrap.rank() == 0) NCCL_CHECK(ncclGetUniqueId(&id));
  Tensor t = Tensor::zeros({32}, DType::I32, Device::CPU);
  std::memcpy(t.raw(), &id, sizeof id);
  bootstrap.broadcast(t, 0);
  std::memcpy(&id, t.raw(), sizeof id);
  return id;
}

class NcclComm final : public Comm {
 public:
  // The world group of bootstrap's ranks.
  NcclComm(const CommOptions& opts, Comm& bootstrap, int local_rank)
      : Comm(bootstrap.rank(), bootstrap.members(), opts), device_(device_for(local_rank)) {
    CUDA_CHECK(cudaSetDevice(device_));
    const ncclUniqueId id = shared_unique_id(bootstrap);
    NCCL_CHECK(ncclCommInitRank(&comm_, size(), id, rank()));
    open();
  }
  ~NcclComm() override {
    if (!stop()) return;  // the thread is still polling this communicator: leave it
    release();
  }
  const char* backend() const override { return "nccl"; }
  void check_dtype(const char* call, DType dtype, bool reduce) const override { nccl_type(dtype, reduce, call); }

 protected:
  void run_all_reduce(const Tensor& buf, ReduceOp op) override {
    check_cuda("all_reduce", "buf", buf);
    const ncclDataType_t type = nccl_type(buf.dtype(), true, "all_reduce");
    const ncclRedOp_t red = nccl_op(op, buf.dtype(), "all_reduce");
    begin();
    NCCL_CHECK(ncclAllReduce(buf.raw(), buf.raw(), count(buf.numel()), type, red, comm_, stream_));
    finish();
  }

  // Equal parts are one ncclReduceScatter; unequal ones one ncclReduce per part, to its rank.
  void run_reduce_scatter(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                          ReduceOp op) override {
    check_cuda("reduce_scatter", "in", in);
    check_cuda("reduce_scatter", "out", out);
    const DType dt = dtype_of(in, out);
    const ncclDataType_t type = nccl_type(dt, true, "reduce_scatter");
    const ncclRedOp_t red = nccl_op(op, dt, "reduce_scatter");
    begin();
    if (all_equal(counts)) {
      if (counts[0] > 0) NCCL_CHECK(ncclReduceScatter(in.raw(), out.raw(), count(counts[0]), type, red, comm_, stream_));
    } else {
      grouped([&] {
        int64_t offset = 0;
        for (int r = 0; r < size(); ++r) {
          const int64_t n = counts[static_cast<size_t>(r)];
          if (n > 0)
            NCCL_CHECK(ncclReduce(at(in, offset), r == rank() ? out.raw() : nullptr, count(n), type, red, r, comm_,
                                  stream_));
          offset += n;
        }
      });
    }
    finish();
  }

  // Equal parts are one ncclAllGather; unequal ones one ncclBroadcast per part, from its rank.
  void run_all_gather(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts) override {
    check_cuda("all_gather", "in", in);
    check_cuda("all_gather", "out", out);
    const ncclDataType_t type = nccl_type(dtype_of(out, in), false, "all_gather");
    begin();
    if (all_equal(counts)) {
      if (counts[0] > 0) NCCL_CHECK(ncclAllGather(in.raw(), out.raw(), count(counts[0]), type, comm_, stream_));
    } else {
      grouped([&] {
        int64_t offset = 0;
        for (int r = 0; r < size(); ++r) {
          const int64_t n = counts[static_cast<size_t>(r)];
          void* part = at(out, offset);
          if (n > 0) NCCL_CHECK(ncclBroadcast(r == rank() ? in.raw() : part, part, count(n), type, r, comm_, stream_));
          offset += n;
        }
      });
    }
    finish();
  }

  void run_all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                        const std::vector<int64_t>& recv_counts) override {
    check_cuda("all_to_all_v", "send", send);
    check_cuda("all_to_all_v", "recv", recv);
    const ncclDataType_t type = nccl_type(dtype_of(send, recv), false, "all_to_all_v");
    begin();
    grouped([&] {
      int64_t sent = 0, received = 0;
      for (int p = 0; p < size(); ++p) {
        const int64_t ns = send_counts[static_cast<size_t>(p)], nr = recv_counts[static_cast<size_t>(p)];
        if (ns > 0) NCCL_CHECK(ncclSend(at(send, sent), count(ns), type, p, comm_, stream_));
        if (nr > 0) NCCL_CHECK(ncclRecv(at(recv, received), count(nr), type, p, comm_, stream_));
        sent += ns;
        received += nr;
      }
    });
    finish();
  }

  void run_broadcast(const Tensor& buf, int root) override {
    check_cuda("broadcast", "buf", buf);
    const ncclDataType_t type = nccl_type(buf.dtype(), false, "broadcast");
    begin();
    NCCL_CHECK(ncclBroadcast(buf.raw(), buf.raw(), count(buf.numel()), type, root, comm_, stream_));
    finish();
  }

  // A one-element all-reduce: it completes on no rank before every rank has issued it.
  void run_barrier() override {
    begin();
    NCCL_CHECK(ncclAllReduce(zero_, zero_, 1, ncclFloat32, ncclSum, comm_, stream_));
    finish();
  }

  std::unique_ptr<Comm> make_split(int color, int key, const std::string& name) override {
    // Every rank learns every (color, key) first, so that all of them agree on the members and
    // throw together on a bad color instead of leaving the others in ncclCommSplit.
    const std::vector<int32_t> ck = gather_color_key(color, key);
    std::vector<std::tuple<int, int, int>> group;  // (key, rank in this group, world rank)
    for (int r = 0; r < size(); ++r) {
      const int c = ck[2 * static_cast<size_t>(r)], k = ck[2 * static_cast<size_t>(r) + 1];
      MOELAB_CHECK(c >= 0, "split of group ", options().name, " into ", name, ": rank ", r, " passes color ", c,
                   " (expected >= 0)");
      if (c == color) group.emplace_back(k, r, members()[static_cast<size_t>(r)]);
    }
    std::sort(group.begin(), group.end());
    std::vector<int> world_ranks;
    int new_rank = -1;
    for (const auto& [k, r, w] : group) {
      if (r == rank()) new_rank = static_cast<int>(world_ranks.size());
      world_ranks.push_back(w);
    }
    ncclComm_t sub = nullptr;
    NCCL_CHECK(ncclCommSplit(comm_, color, key, &sub, nullptr));
    int nccl_rank = -1;
    const ncclResult_t rc = ncclCommUserRank(sub, &nccl_rank);
    if (rc != ncclSuccess || nccl_rank != new_rank) {
      ncclCommDestroy(sub);
      nccl_check(rc, "ncclCommUserRank (of the split communicator)");
      throw CommError("split of group " + options().name + " into " + name + ": NCCL ranks this process " +
                      std::to_string(nccl_rank) + ", expected " + std::to_string(new_rank) +
                      " (the order by key, then by rank)");
    }
    CommOptions o = options();
    o.name = name;
    return std::unique_ptr<Comm>(new NcclComm(sub, new_rank, std::move(world_ranks), o, device_));
  }

 private:
  // A group made by make_split from a communicator NCCL already created.
  NcclComm(ncclComm_t comm, int rank, std::vector<int> members, const CommOptions& opts, int device)
      : Comm(rank, std::move(members), opts), comm_(comm), device_(device) {
    open();
  }

  // The stream and the barrier's buffer, then the communication thread.
  void open() {
    try {
      CUDA_CHECK(cudaSetDevice(device_));
      CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&zero_), sizeof(float)));
      CUDA_CHECK(cudaMemset(zero_, 0, sizeof(float)));
    } catch (...) {
      release();
      throw;
    }
    start();
  }

  // Destroys the communicator, or aborts it when work is still in flight or NCCL reported an
  // error (a failed collective): ncclCommDestroy would wait for kernels whose peers are gone.
  void release() noexcept {
    cudaSetDevice(device_);
    if (comm_) {
      ncclResult_t state = ncclSuccess;
      const bool idle = !stream_ || cudaStreamQuery(stream_) == cudaSuccess;
      if (idle && ncclCommGetAsyncError(comm_, &state) == ncclSuccess && state == ncclSuccess) ncclCommDestroy(comm_);
      else ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    if (zero_) cudaFree(zero_);
    if (stream_) cudaStreamDestroy(stream_);
    zero_ = nullptr;
    stream_ = nullptr;
  }

  // Before issuing: this thread's current device (a new host thread starts on device 0), and the
  // input's producers done: the stream waits for the caller's event, or without one the host waits
  // for everything queued on the default stream (see the file comment).
  void begin() {
    CUDA_CHECK(cudaSetDevice(device_));
    if (const CudaEvent* ready = current_ready()) {
      CUDA_CHECK(cudaStreamWaitEvent(stream_, static_cast<cudaEvent_t>(ready->handle()), 0));
      return;
    }
    CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  }

  // Waits for the issued collective (see the file comment).
  void finish() {
    for (;;) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) cuda_check(q, "cudaStreamQuery(the communication stream)");
      ncclResult_t state = ncclSuccess;
      NCCL_CHECK(ncclCommGetAsyncError(comm_, &state));
      if (state != ncclSuccess && state != ncclInProgress)
        abort_with(CommError(where() + current_call() + " failed: " + ncclGetErrorString(state)));
      if (timed_out())
        abort_with(timeout_error("NCCL cannot tell which peer is missing (the MPI backend names it); the NCCL "
                                 "communicator was aborted"));
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  // A communicator in error or past its deadline is unusable: abort its kernels, then throw.
  [[noreturn]] void abort_with(const CommError& e) {
    ncclCommAbort(comm_);
    comm_ = nullptr;
    throw e;
  }

  std::string where() const {
    return "rank " + std::to_string(rank()) + " (world rank " + std::to_string(members()[static_cast<size_t>(rank())]) +
           ") of group " + options().name + ": ";
  }

  // Every rank's (color, key), in rank order. Runs on the caller's thread while the queue is empty.
  std::vector<int32_t> gather_color_key(int color, int key) {
    CUDA_CHECK(cudaSetDevice(device_));
    Tensor mine = Tensor::empty({2}, DType::I32, Device::CPU);
    mine.data<int32_t>()[0] = color;
    mine.data<int32_t>()[1] = key;
    const Tensor all = Tensor::empty({2 * static_cast<int64_t>(size())}, DType::I32, Device::CUDA);
    run_all_gather(mine.to(Device::CUDA), all, std::vector<int64_t>(static_cast<size_t>(size()), 2));
    const Tensor host = all.to(Device::CPU);
    const int32_t* p = host.data<int32_t>();
    return std::vector<int32_t>(p, p + host.numel());
  }

  ncclComm_t comm_ = nullptr;
  int device_;
  cudaStream_t stream_ = nullptr;
  float* zero_ = nullptr;  // the barrier's all-reduce operand: stays 0
};

}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<Comm> nccl_world(const CommOptions& opts, Comm& bootstrap, int local_rank) {
  return std::make_unique<NcclComm>(opts, bootstrap, local_rank);
}

}  // namespace moelab::dist
