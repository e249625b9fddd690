// dist::Comm: the collectives moelab's data and expert parallelism use, over one group of ranks
// (DESIGN.md, "Distributed"). Two backends implement the same calls:
//   MPI   host memory (OpenMPI from Debian); a CUDA tensor is staged through host memory, so several
//         processes can share one GPU in tests (dist/mpi_comm.cpp);
//   NCCL  CUDA tensors, one process per GPU, bootstrapped over MPI (dist/nccl_comm.cpp).
//
// Every collective is queued to the group's communication thread and runs there in call order (all
// ranks of a group must issue the same collectives in the same order, as in MPI). The *_async forms
// return at once with a Work to wait() on, so the caller computes while the collective runs: this is
// how the gradient reduction hides behind the rest of backward. The blocking forms are async + wait.
//
// Shapes (elements, any dtype the backend supports: f32, f64, bf16, i32; in-place where it says so):
//   all_reduce(buf)                         buf [n] in place: the sum (or mean) over the group
//   reduce_scatter(in, out, counts)         in [sum counts], out [counts[rank]]: rank r gets the sum
//                                           (or mean) of every rank's in[offset_r, offset_r + counts[r])
//   all_gather(in, out, counts)             in [counts[rank]], out [sum counts]: every rank's part in
//                                           rank order (counts may differ per rank, may be 0)
//   all_to_all_v(send, send_counts, recv, recv_counts)
//                                           send [sum send_counts], blocks in peer order; recv likewise;
//                                           send_counts[p] of mine == recv_counts[me] of p's
//   broadcast(buf, root)                    buf [n] in place: root's values everywhere
//   barrier()
//
// Traffic: every call counts the bytes THIS rank sends, per link class (intra-node, inter-node), by
// the algorithm's real volume: ring all-reduce 2(N-1)/N of the buffer to the ring's next rank, ring
// reduce-scatter / all-gather (N-1)/N, all-to-all the exact per-peer blocks, broadcast the buffer
// once per rank but the last of the chain. Nodes are emulated: world rank w sits on node
// w / ranks_per_node.
//
// Link emulation (LinkModel): when a link class has a bandwidth, the communication thread holds each
// collective until  start + modeled time  (if the real transfer was faster):
//   all_reduce      2(N-1) (latency + (S/N) / bandwidth)      S = buffer bytes, N = group size
//   reduce_scatter  (N-1) (latency + (S/N) / bandwidth)       S = the input's bytes
//   all_gather      (N-1) (latency + (S/N) / bandwidth)       S = the output's bytes
//   broadcast       (N-1) latency + S / bandwidth             (a pipelined chain)
//   all_to_all_v    latency + max(bytes sent, bytes received) / bandwidth, per link class, the
//                   slower class counting
// using the slowest link class the group's ring crosses. So a machine with slower links is
// measured, not guessed, and communication hidden behind computation shows up as hidden time.
//
// Failure: a collective that has not finished within timeout_s throws CommError on every rank that
// waits for it, naming this rank, the group, the call, and the ranks that no longer respond (the
// MPI backend asks each peer; a rank stopped or dead does not answer). After an error the Comm is
// broken: every later call throws the same error. Should the backend itself hang (a peer that
// stops in the middle of a transfer), Work::wait gives up kStallGrace seconds past the deadline
// and throws from the caller's thread. The caller (train/main.cpp) reports the error and ends the
// job (dist::abort_job) so that no rank waits forever.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/check.h"
#include "core/device.h"
#include "core/tensor.h"

namespace moelab::dist {

class CommError : public Error {
 public:
  using Error::Error;
};

enum class ReduceOp { Sum, Average };

// One class of link: bandwidth in GB/s (1e9 bytes) per direction per rank, latency per message.
// bandwidth 0: not emulated (as fast as the machine is).
struct Link {
  double gbytes_per_s = 0;
  double latency_us = 0;
  // One message of `bytes` over the link: latency + bytes / bandwidth (the atom of every formula
  // above, which train/plan.h's cost model uses too). Needs gbytes_per_s > 0.
  double seconds(double bytes) const { return latency_us * 1e-6 + bytes / (gbytes_per_s * 1e9); }
};

enum class LinkClass { Intra = 0, Inter = 1 };

struct LinkModel {
  Link intra, inter;
  bool emulated() const { return intra.gbytes_per_s > 0 || inter.gbytes_per_s > 0; }
  const Link& link(LinkClass c) const { return c == LinkClass::Intra ? intra : inter; }
  // Presets (effective per-direction bandwidth a collective sees, not the marketing peak):
  //   none     nothing emulated
  //   pcie4    intra 20 GB/s 5 us  (PCIe 4.0 x16 through the host, no NVLink)     inter as ib200
  //   pcie5    intra 40 GB/s 5 us                                                  inter as ib400
  //   nvlink4  intra 350 GB/s 3 us (H100 NVLink 4, ~450 GB/s peak per direction)   inter as ib400
  //   ib200    intra and inter 22 GB/s 8 us (HDR InfiniBand, 200 Gb/s)
  //   ib400    intra and inter 45 GB/s 6 us (NDR InfiniBand, 400 Gb/s)
  // Throws naming the preset and listing the known ones.
  static LinkModel preset(const std::string& name);
  static const std::vector<std::string>& preset_names();
};

// What a group has done since it was created (this rank's view).
struct CommCounters {
  int64_t calls = 0;
  int64_t bytes[2] = {0, 0};   // sent by this rank, [LinkClass::Intra], [LinkClass::Inter]
  double busy_s = 0;           // the communication thread's time inside collectives (held time included)
  double modeled_s = 0;        // the link model's time for them (0 when nothing is emulated)
  double waited_s = 0;         // callers' time blocked in wait(): the communication NOT hidden
  double arrival_s = 0;        // within busy_s: waiting for the last peer to reach the collective
                               // (the ranks' imbalance, not the link's time)
  int64_t total_bytes() const { return bytes[0] + bytes[1]; }
};

struct CommOptions {
  double timeout_s = 300;  // a collective not done by then throws CommError
  int ranks_per_node = 0;  // emulated nodes: world rank w is on node w / ranks_per_node; 0: one node
  LinkModel link;          // emulated links (LinkModel::preset("none"): none)
  std::string name = "world";  // the group's name in messages ("world", "dp", "ep")
};

// A queued collective. wait() blocks until it finished and rethrows its error, or throws CommError
// when the collective running on the communication thread has run kStallGrace seconds past the
// deadline without the backend noticing.
class Work {
 public:
  void wait();
  bool done() const;

 private:
  friend class Comm;
  std::function<void()> run_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::exception_ptr error_;
  class Comm* comm_ = nullptr;
};
using WorkHandle = std::shared_ptr<Work>;

class Comm {
 public:
  virtual ~Comm();
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;

  int rank() const { return rank_; }                        // in this group
  int size() const { return static_cast<int>(members_.size()); }
  const std::vector<int>& members() const { return members_; }  // world rank of each group rank
  const CommOptions& options() const { return opts_; }
  virtual const char* backend() const = 0;                  // "mpi", "nccl", "local"
  CommCounters counters() const;
  // Whether two ranks of this group sit on one emulated node (Intra) or not.
  LinkClass link_class(int group_rank_a, int group_rank_b) const;

  // ready (CUDA tensors, optional): an event recorded right after the kernels that wrote the input;
  // a backend with its own stream waits for it alone instead of for all the queued computation.
  WorkHandle all_reduce_async(const Tensor& buf, ReduceOp op, const CudaEvent* ready = nullptr);
  WorkHandle reduce_scatter_async(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts, ReduceOp op,
                                  const CudaEvent* ready = nullptr);
  WorkHandle all_gather_async(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts);
  WorkHandle all_to_all_v_async(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                                const std::vector<int64_t>& recv_counts);
  WorkHandle broadcast_async(const Tensor& buf, int root);

  void all_reduce(const Tensor& buf, ReduceOp op) { all_reduce_async(buf, op)->wait(); }
  void reduce_scatter(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts, ReduceOp op) {
    reduce_scatter_async(in, out, counts, op)->wait();
  }
  void all_gather(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts) {
    all_gather_async(in, out, counts)->wait();
  }
  void all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                    const std::vector<int64_t>& recv_counts) {
    all_to_all_v_async(send, send_counts, recv, recv_counts)->wait();
  }
  void broadcast(const Tensor& buf, int root) { broadcast_async(buf, root)->wait(); }
  void barrier();
  // Sums (or averages) a few host doubles over the group: statistics, norms, flags.
  void all_reduce(std::vector<double>& values, ReduceOp op);

  // A sub-group of the ranks that pass the same color, ordered by key (then by rank); every rank
  // of this group must call it. name: the new group's name in messages.
  std::unique_ptr<Comm> split(int color, int key, const std::string& name);

 protected:
  Comm(int rank, std::vector<int> members, CommOptions opts);
  // Starts the communication thread; the backend's constructor calls it last.
  void start();
  // Stops the thread after the queued work; the backend's destructor calls it first. Returns false
  // when the thread was stuck in the backend past its deadline and was left running: the backend
  // must then leave its resources alone (the process is ending with an error).
  bool stop();

  // The backend: blocking, called on the communication thread in queue order. Each checks the
  // deadline (timed_out()) while it waits and throws CommError through timeout_error().
  virtual void run_all_reduce(const Tensor& buf, ReduceOp op) = 0;
  virtual void run_reduce_scatter(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                                  ReduceOp op) = 0;
  virtual void run_all_gather(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts) = 0;
  virtual void run_all_to_all_v(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                                const std::vector<int64_t>& recv_counts) = 0;
  virtual void run_broadcast(const Tensor& buf, int root) = 0;
  virtual void run_barrier() = 0;
  // Liveness from a caller's thread while the communication thread may be stuck in the backend:
  // serve_peers answers peers that ask whether this rank is alive (Work::wait calls it while it
  // waits); silent_peers_report asks the peers and names those that do not answer ("" when all do,
  // or when the backend cannot tell).
  virtual void serve_peers() {}
  virtual std::string silent_peers_report() { return ""; }
  // Throws when the backend cannot run `call` on tensors of dtype (reduce: the call adds them), on
  // the caller's thread before anything is queued: a wrong argument must not break the group.
  virtual void check_dtype(const char* call, DType dtype, bool reduce) const = 0;
  // The backend's split (called on the caller's thread while the queue is empty).
  virtual std::unique_ptr<Comm> make_split(int color, int key, const std::string& name) = 0;

  // The collective now running: its description for messages, whether its deadline passed, and
  // the event its input waits for (null: none given).
  std::string current_call() const;
  const CudaEvent* current_ready() const;
  bool timed_out() const;
  // "rank 1 (world rank 1) of group dp: all_reduce of 4.20 MB did not finish within 5 s; <detail>"
  CommError timeout_error(const std::string& detail) const;
  void add_arrival_wait(double seconds);  // the backend's share of CommCounters::arrival_s

 private:
  struct Cost {
    int64_t bytes[2] = {0, 0};
    double modeled_s = 0;
  };
  struct Queued {
    WorkHandle work;
    std::string call;
    Cost cost;
    const CudaEvent* ready = nullptr;
  };
  WorkHandle enqueue(std::string call, Cost cost, std::function<void()> run, const CudaEvent* ready = nullptr);
  void thread_main();
  Cost ring_cost(double bytes_per_step, int steps, int64_t step_bytes_to_next) const;
  Cost broadcast_cost(int64_t bytes, int root) const;
  Cost all_to_all_cost(const std::vector<int64_t>& send_bytes, const std::vector<int64_t>& recv_bytes) const;
  void check_counts(const char* call, const std::vector<int64_t>& counts) const;

  int rank_;
  std::vector<int> members_;
  CommOptions opts_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Queued> queue_;
  bool stopping_ = false;
  bool thread_done_ = false;
  std::exception_ptr broken_;  // the first error: every later call rethrows it
  CommCounters counters_;
  std::thread thread_;
  // Set by the communication thread for the collective it runs (under mu_; deadline_ is read by the
  // thread itself and by stalled() under mu_).
  std::string current_call_;
  const CudaEvent* current_ready_ = nullptr;
  double deadline_ = 0;  // steady-clock seconds; 0: idle
  // For Work::wait: a CommError when the running collective is kStallGrace past its deadline.
  bool stalled(CommError* error) const;
  friend class Work;
};

// How long past dist.timeout_s a caller waits for a backend that does not return: enough for the
// MPI backend's own timeout and its liveness census (a few seconds) to report first.
constexpr double kStallGrace = 10.0;

// Seconds on the steady clock (the one the deadlines and the link model use).
double now_seconds();
// "4.20 MB" (decimal units, as link bandwidths are quoted).
std::string human_bytes(double bytes);

}  // namespace moelab::dist
