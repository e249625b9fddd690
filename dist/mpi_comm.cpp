// The MPI backend of dist::Comm (dist/comm.h, dist/backends.h), over OpenMPI.
//
// Each collective runs on the group's communication thread. Small ones (under 256 kB; every rank
// decides alike) are one nonblocking call driven with MPI_Test as below; large ones and every
// all-to-all (whose sizes differ per rank) come in two parts:
//   arrival   a nonblocking barrier driven with MPI_Test: every rank has reached the collective. A
//             rank waiting for a slower peer spins (with a yield) for the first milliseconds, then
//             sleeps between tests, leaving the cores to the computation; the loop watches the
//             deadline and answers peers' liveness pings. Its time is counted apart
//             (CommCounters::arrival_s): it is the ranks' imbalance, not link time.
//   transfer  the blocking MPI collective (MPI_Allreduce, ...), with every peer present. Blocking
//             calls use OpenMPI's tuned algorithms and progress continuously; the nonblocking ones
//             (libnbc) progress only inside MPI_Test and measured 5-30x slower here (a 4 MB
//             all-reduce between two processes: 12 ms against 1-2 ms). A peer that stops during
//             the transfer is caught by the caller's watch in Work::wait (dist/comm.h).
//
// Liveness: each group has a private duplicate communicator for pings. A rank whose collective
// passes dist.timeout_s pings every peer and waits a moment for the answers; ranks that are alive
// and also waiting answer from their own loops, so the error can name the ranks that do not (dead,
// stopped, or stuck outside communication).
//
// CUDA tensors are staged through host copies in page-locked buffers kept by the group (so several
// processes can share one GPU; NCCL is the fast path for CUDA tensors). bf16 and fp8 tensors can be moved but not reduced (MPI has no such
// arithmetic): reductions take f32, f64 or i32.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <thread>

#include "dist/backends.h"

namespace moelab::dist {

namespace {

void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw CommError(std::string(what) + " failed: " + std::string(msg, static_cast<size_t>(len)));
}
#define MPI_CHECK(call) mpi_check((call), #call)

MPI_Datatype mpi_type(DType t, bool reduce, const char* call) {
  switch (t) {
    case DType::F32: return MPI_FLOAT;
    case DType::F64: return MPI_DOUBLE;
    case DType::I32: return MPI_INT32_T;
    case DType::BF16:
    case DType::FP8_E4M3:
      MOELAB_CHECK(!reduce, call, ": MPI cannot reduce ", dtype_name(t), " (reduce f32, f64 or i32)");
      return t == DType::BF16 ? MPI_UINT16_T : MPI_UINT8_T;
  }
  throw Error(std::string(call) + ": unknown dtype");
}

int as_int(int64_t n, const char* call) {
  MOELAB_CHECK(n <= INT_MAX, call, ": ", n, " elements exceed MPI's int counts (split the buffer)");
  return static_cast<int>(n);
}

std::vector<int> ints(const std::vector<int64_t>& v, const char* call) {
  std::vector<int> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = as_int(v[i], call);
  return out;
}

std::vector<int> displacements(const std::vector<int>& counts) {
  std::vector<int> d(counts.size(), 0);
  for (size_t i = 1; i < counts.size(); ++i) d[i] = d[i - 1] + counts[i - 1];
  return d;
}

// Host memory for staging, kept and grown as needed: page-locked when there is a GPU (so the
// copies of CUDA tensors run at full speed), reused call after call (pinning is slow). One per
// buffer a collective stages at once (its input and its output).
class StagingBuffer {
 public:
  Tensor take(const Shape& shape, DType dtype) {
    const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
    if (!storage_ || storage_->bytes() < bytes)
      storage_ = std::make_shared<Storage>(bytes + bytes / 2 + 256, Device::CPU, /*pinned=*/true);
    return Tensor::view_of(storage_, 0, shape, dtype);
  }

 private:
  std::shared_ptr<Storage> storage_;
};

// A CPU tensor with t's contents (t itself when it is on the CPU, unless copy is asked for: an
// output that overlaps the input), in `buffer`; write_back copies it into t.
struct Staged {
  Tensor device, host;
  Staged(const Tensor& t, bool read, StagingBuffer& buffer, bool copy = false) : device(t) {
    if (!t.defined() || (t.device() == Device::CPU && !copy)) {
      host = t;
      return;
    }
    host = buffer.take(t.shape(), t.dtype());
    if (read) host.copy_from(t);
  }
  void* ptr() const { return host.defined() ? host.raw() : nullptr; }
  void write_back() const {
    if (device.defined() && host.raw() != device.raw()) device.copy_from(host);
  }
};

// Whether a and b share memory (they are views of one storage whose byte ranges intersect).
bool overlap(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined() || a.storage() != b.storage()) return false;
  const size_t a0 = a.byte_offset(), b0 = b.byte_offset();
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

void divide(const Tensor& t, int n) {
  if (t.dtype() == DType::F32) {
    float* p = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] /= static_cast<float>(n);
  } else if (t.dtype() == DType::F64) {
    double* p = t.data<double>();
    for (int64_t i = 0; i < t.numel(); ++i) p[i] /= n;
  } else {
    throw Error(std::string("ReduceOp::Average of ") + dtype_name(t.dtype()) + ": expected f32 or f64");
  }
}

constexpr int kPingTag = 1, kPongTag = 2;

class MpiComm final : public Comm {
 public:
  MpiComm(MPI_Comm comm, std::vector<int> members, CommOptions opts) : Comm(rank_of(comm), std::move(members), std::move(opts)), comm_(comm) {
    MPI_CHECK(MPI_Comm_dup(comm_, &census_));
    start();
  }
  ~MpiComm() override {
    if (!stop()) return;  // the thread is still inside MPI with these communicators
    MPI_Comm_free(&census_);
    if (comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
  }
  const char* backend() const override { return "mpi"; }

 protected:
  void run_all_reduce(const Tensor& buf, ReduceOp op) override {
    const MPI_Datatype type = mpi_type(buf.dtype(), true, "all_reduce");
    Staged s(buf, true, stage_in_);
    const int n = as_int(buf.numel(), "all_reduce");
    transfer(
        "MPI_(I)allreduce", static_cast<int64_t>(buf.nbytes()),
        [&](MPI_Request* r) { return MPI_Iallreduce(MPI_IN_PLACE, s.ptr(), n, type, MPI_SUM, comm_, r); },
        [&] { return MPI_Allreduce(MPI_IN_PLACE, s.ptr(), n, type, MPI_SUM, comm_); });
    if (op == ReduceOp::Average) divide(s.host, size());
    s.write_back();
  }

  void run_reduce_scatter(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                          ReduceOp op) override {
    const DType dt = in.defined() ? in.dtype() : out.defined() ? out.dtype() : DType::F32;
    const MPI_Datatype type = mpi_type(dt, true, "reduce_scatter");
    const std::vector<int> c = ints(counts, "reduce_scatter");
    // ZeRO-1 reduces a bucket into this rank's slice of it: the output lies inside the input, which
    // MPI does not allow, so the result goes through a copy.
    Staged si(in, true, stage_in_), so(out, false, stage_out_, overlap(in, out));
    float dummy = 0;  // MPI wants valid pointers for empty parts
    void* src = si.ptr() ? si.ptr() : &dummy;
    void* dst = so.ptr() ? so.ptr() : &dummy;
    transfer(
        "MPI_(I)reduce_scatter", in.defined() ? static_cast<int64_t>(in.nbytes()) : 0,
        [&](MPI_Request* r) { return MPI_Ireduce_scatter(src, dst, c.data(), type, MPI_SUM, comm_, r); },
        [&] { return MPI_Reduce_scatter(src, dst, c.data(), type, MPI_SUM, comm_); });
    if (out.defined() && op == ReduceOp::Average) divide(so.host, size());
    so.write_back();
  }

  void run_all_gather(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts) override {
    const DType dt = out.defined() ? out.dtype() : in.dtype();
    const MPI_Datatype type = mpi_type(dt, false, "all_gather");
    const std::vector<int> c = ints(counts, "all_gather"), d = displacements(c);
    // In place (ZeRO-1 gathers the slices into the buckets they are part of): `in` is this rank's
    // own block of `out`, which MPI takes as MPI_IN_PLACE.
    const bool in_place = overlap(in, out);
    MOELAB_CHECK(!in_place || (in.storage() == out.storage() &&
                               in.byte_offset() == out.byte_offset() + static_cast<size_t>(d[rank()]) * dtype_size(dt)),
                 "all_gather: in overlaps out but is not this rank's block of it");
    Staged si(in, !in_place, stage_in_), so(out, in_place, stage_out_);
    float dummy = 0;
    const void* src = in_place ? MPI_IN_PLACE : si.ptr() ? si.ptr() : &dummy;
    void* dst = so.ptr() ? so.ptr() : &dummy;
    transfer(
        "MPI_(I)allgatherv", out.defined() ? static_cast<int64_t>(out.nbytes()) : 0,
        [&](MPI_Request* r) {
          return MPI_Iallgatherv(src, c[rank()], type, dst, c.data(), d.data(), type, comm_, r);
        },
        [&] { return MPI_Allgatherv(src, c[rank()], type, dst, c.data(), d.data(), type, comm_); });
    so.write_back();
  }

  void run_all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                        const std::vector<int64_t>& recv_counts) override {
    const DType dt = send.defined() ? send.dtype() : recv.defined() ? recv.dtype() : DType::F32;
    const MPI_Datatype type = mpi_type(dt, false, "all_to_all_v");
    const std::vector<int> sc = ints(send_counts, "all_to_all_v"), rc = ints(recv_counts, "all_to_all_v");
    const std::vector<int> sd = displacements(sc), rd = displacements(rc);
    Staged ss(send, true, stage_in_), sr(recv, false, stage_out_);
    float dummy = 0;
    void* src = ss.ptr() ? ss.ptr() : &dummy;
    void* dst = sr.ptr() ? sr.ptr() : &dummy;
    // Always the large path: the ranks' byte counts differ here, and every rank must take the same.
    arrive();
    mpi_check(MPI_Alltoallv(src, sc.data(), sd.data(), type, dst, rc.data(), rd.data(), type, comm_), "MPI_Alltoallv");
    sr.write_back();
  }

  void run_broadcast(const Tensor& buf, int root) override {
    const MPI_Datatype type = mpi_type(buf.dtype(), false, "broadcast");
    Staged s(buf, rank() == root, stage_in_);
    const int n = as_int(buf.numel(), "broadcast");
    transfer(
        "MPI_(I)bcast", static_cast<int64_t>(buf.nbytes()),
        [&](MPI_Request* r) { return MPI_Ibcast(s.ptr(), n, type, root, comm_, r); },
        [&] { return MPI_Bcast(s.ptr(), n, type, root, comm_); });
    if (rank() != root) s.write_back();
  }

  void run_barrier() override { arrive(); }

  void check_dtype(const char* call, DType dtype, bool reduce) const override { mpi_type(dtype, reduce, call); }
  void serve_peers() override { answer_pings(); }
  std::string silent_peers_report() override { return silent_peers(); }

  std::unique_ptr<Comm> make_split(int color, int key, const std::string& name) override {
    MPI_Comm sub;
    MPI_CHECK(MPI_Comm_split(comm_, color, key, &sub));
    CommOptions o = options();
    o.name = name;
    return std::make_unique<MpiComm>(sub, world_ranks_of(sub), o);
  }

 private:
  static int rank_of(MPI_Comm c) {
    int r = 0;
    MPI_Comm_rank(c, &r);
    return r;
  }
  static std::vector<int> world_ranks_of(MPI_Comm c) {
    int n = 0;
    MPI_Comm_size(c, &n);
    MPI_Group g, world;
    MPI_Comm_group(c, &g);
    MPI_Comm_group(MPI_COMM_WORLD, &world);
    std::vector<int> local(static_cast<size_t>(n)), global(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) local[static_cast<size_t>(i)] = i;
    MPI_Group_translate_ranks(g, n, local.data(), world, global.data());
    MPI_Group_free(&g);
    MPI_Group_free(&world);
    return global;
  }

  // Below kLargeBytes a collective is one nonblocking call driven by wait(): a few tests finish
  // it, and a hand-off through a barrier would cost more than the transfer. From kLargeBytes on:
  // the arrival barrier, then the blocking call (the file comment says why). `bytes` must be the
  // same on every rank (the buffer's size in an all-reduce, the whole in an all-gather), so that
  // all take the same path.
  static constexpr int64_t kLargeBytes = 256 << 10;
  template <typename Start, typename Blocking>
  void transfer(const char* what, int64_t bytes, Start start, Blocking blocking) {
    if (bytes < kLargeBytes) {
      MPI_Request req;
      mpi_check(start(&req), what);
      wait(req);
      return;
    }
    arrive();
    mpi_check(blocking(), what);
  }

  // Every rank has reached this collective (a watched nonblocking barrier): the time it takes is
  // the wait for the slowest peer, counted apart from the transfer that follows.
  void arrive() {
    const double t0 = now_seconds();
    MPI_Request req;
    MPI_CHECK(MPI_Ibarrier(comm_, &req));
    wait(req);
    add_arrival_wait(now_seconds() - t0);
  }

  // Drives req to completion (see the file comment); on the deadline, names the silent peers.
  void wait(MPI_Request& req) {
    const double t0 = now_seconds();
    for (;;) {
      int done = 0;
      MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done) return;
      answer_pings();
      if (timed_out()) {
        const std::string silent = silent_peers();
        throw timeout_error(silent.empty() ? "every peer answers, so a peer is waiting in a different collective "
                                             "(the ranks' calls are out of order)"
                                           : silent + " (dead, stopped, or busy outside communication)");
      }
      if (now_seconds() - t0 < 2e-3) std::this_thread::yield();
      else std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // Matched probes (MPI_Improbe + MPI_Mrecv): the communication thread and a caller waiting in
  // Work::wait may both answer, and each ping must be taken by exactly one of them.
  void answer_pings() {
    for (;;) {
      int flag = 0;
      MPI_Status st;
      MPI_Message msg;
      MPI_Improbe(MPI_ANY_SOURCE, kPingTag, census_, &flag, &msg, &st);
      if (!flag) return;
      char b = 0;
      MPI_Mrecv(&b, 1, MPI_CHAR, &msg, MPI_STATUS_IGNORE);
      MPI_Request r;  // a 1-byte eager send: completes without the peer; never waited on
      MPI_Isend(&kPong, 1, MPI_CHAR, st.MPI_SOURCE, kPongTag, census_, &r);
      MPI_Request_free(&r);
    }
  }

  // "ranks 1, 3 do not answer", or "" when every peer answered within a few seconds.
  std::string silent_peers() {
    const int n = size();
    std::vector<MPI_Request> pings;
    for (int p = 0; p < n; ++p) {
      if (p == rank()) continue;
      MPI_Request r;
      MPI_Isend(&kPing, 1, MPI_CHAR, p, kPingTag, census_, &r);
      pings.push_back(r);
    }
    std::vector<bool> answered(static_cast<size_t>(n), false);
    answered[static_cast<size_t>(rank())] = true;
    const double until = now_seconds() + std::min(3.0, std::max(0.5, options().timeout_s / 2));
    int left = n - 1;
    while (left > 0 && now_seconds() < until) {
      answer_pings();
      int flag = 0;
      MPI_Status st;
      MPI_Message msg;
      MPI_Improbe(MPI_ANY_SOURCE, kPongTag, census_, &flag, &msg, &st);
      if (flag) {
        char b = 0;
        MPI_Mrecv(&b, 1, MPI_CHAR, &msg, MPI_STATUS_IGNORE);
        if (!answered[static_cast<size_t>(st.MPI_SOURCE)]) --left;
        answered[static_cast<size_t>(st.MPI_SOURCE)] = true;
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
    for (MPI_Request& r : pings) MPI_Request_free(&r);
    std::string out;
    int silent = 0;
    for (int p = 0; p < n; ++p) {
      if (answered[static_cast<size_t>(p)]) continue;
      out += (silent++ ? ", " : "") + std::to_string(p);
      if (members()[static_cast<size_t>(p)] != p) out += " (world rank " + std::to_string(members()[static_cast<size_t>(p)]) + ")";
    }
    if (silent == 0) return "";
    return (silent == 1 ? "rank " : "ranks ") + out + (silent == 1 ? " does not answer" : " do not answer");
  }

  static constexpr char kPing = 'p', kPong = 'o';
  StagingBuffer stage_in_, stage_out_;  // used by the communication thread only
  MPI_Comm comm_;
  MPI_Comm census_;
};

}  // namespace

bool mpi_built() { return true; }

MpiSession::MpiSession() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return;  // an outer session (or the test's main) owns MPI
  int provided = 0;
  MPI_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided));
  owns_ = true;
  if (provided < MPI_THREAD_MULTIPLE) {
    MPI_Finalize();
    throw Error("MPI: this MPI library does not provide MPI_THREAD_MULTIPLE (got level " + std::to_string(provided) +
                "); moelab's communication threads need it");
  }
}

MpiSession::~MpiSession() {
  if (!owns_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

std::unique_ptr<Comm> mpi_world(const CommOptions& opts) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  MOELAB_CHECK(initialized, "mpi_world: MPI is not initialised (create an MpiSession first)");
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  std::vector<int> members(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) members[static_cast<size_t>(i)] = i;
  return std::make_unique<MpiComm>(MPI_COMM_WORLD, members, opts);
}

void abort_job(int exit_code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  // MPI_Abort can block behind a communication thread stuck inside a blocking collective (a peer
  // stopped in the middle of a transfer). If it has not ended this process in a few seconds, the
  // process leaves on its own with the exit code; the launcher sees that and ends the job.
  std::thread([exit_code] {
    std::this_thread::sleep_for(std::chrono::seconds(5));
    std::_Exit(exit_code);
  }).detach();
  MPI_Abort(MPI_COMM_WORLD, exit_code);
}

}  // namespace moelab::dist
