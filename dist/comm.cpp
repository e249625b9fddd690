// dist::Comm's backend-independent half (dist/comm.h): the communication thread and its queue, the
// byte accounting and the link model, the deadline, the checks of counts and shapes.
#include "dist/comm.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>

namespace moelab::dist {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string human_bytes(double bytes) {
  char buf[32];
  if (bytes >= 1e9) std::snprintf(buf, sizeof buf, "%.2f GB", bytes / 1e9);
  else if (bytes >= 1e6) std::snprintf(buf, sizeof buf, "%.2f MB", bytes / 1e6);
  else if (bytes >= 1e3) std::snprintf(buf, sizeof buf, "%.2f kB", bytes / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f B", bytes);
  return buf;
}

// --- Link presets ---------------------------------------------------------------------------------

namespace {
struct Preset {
  const char* name;
  Link intra, inter;
};
// Effective per-direction bandwidths of a collective on such a machine (what NCCL's bus bandwidth
// reaches, not the link's peak): PCIe 4.0 x16 ~25 GB/s peak -> ~20; PCIe 5.0 ~50 -> ~40; NVLink 4 on
// H100 450 GB/s per direction -> ~350; HDR 200 Gb/s = 25 GB/s -> ~22; NDR 400 Gb/s = 50 GB/s -> ~45.
const std::vector<Preset>& presets() {
  static const Link ib200{22, 8}, ib400{45, 6};
  static const std::vector<Preset> p = {
      {"none", {}, {}},
      {"pcie4", {20, 5}, ib200},
      {"pcie5", {40, 5}, ib400},
      {"nvlink4", {350, 3}, ib400},
      {"ib200", ib200, ib200},
      {"ib400", ib400, ib400},
  };
  return p;
}
}  // namespace

const std::vector<std::string>& LinkModel::preset_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const Preset& p : presets()) n.push_back(p.name);
    return n;
  }();
  return names;
}

LinkModel LinkModel::preset(const std::string& name) {
  for (const Preset& p : presets())
    if (name == p.name) return LinkModel{p.intra, p.inter};
  std::string known;
  for (const std::string& n : preset_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error("dist.link = '" + name + "' is not a known link preset (expected one of: " + known + ")");
}

// --- Work -------------------------------------------------------------------------------------------

void Work::wait() {
  const double t0 = now_seconds();
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, std::chrono::milliseconds(200), [&] { return done_; })) {
    if (!comm_) continue;
    lock.unlock();
    comm_->serve_peers();  // a peer whose own collective timed out asks whether this rank is alive
    CommError stalled("");
    if (comm_->stalled(&stalled)) {
      const std::string silent = comm_->silent_peers_report();
      throw silent.empty() ? stalled : CommError(std::string(stalled.what()) + "; " + silent);
    }
    lock.lock();
  }
  lock.unlock();
  if (comm_) {
    std::lock_guard<std::mutex> g(comm_->mu_);
    comm_->counters_.waited_s += now_seconds() - t0;
  }
  if (error_) std::rethrow_exception(error_);
}

bool Work::done() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

// --- Comm ---------------------------------------------------------------------------------------------

Comm::Comm(int rank, std::vector<int> members, CommOptions opts)
    : rank_(rank), members_(std::move(members)), opts_(std::move(opts)) {
  MOELAB_CHECK(!members_.empty() && rank_ >= 0 && rank_ < size(), "Comm: rank ", rank_, " of a group of ",
               members_.size());
  MOELAB_CHECK(opts_.timeout_s > 0, "dist.timeout_s = ", opts_.timeout_s, " (expected > 0 seconds)");
  MOELAB_CHECK(opts_.ranks_per_node >= 0, "dist.ranks_per_node = ", opts_.ranks_per_node, " (expected >= 0)");
}

Comm::~Comm() = default;

void Comm::start() { thread_ = std::thread([this] { thread_main(); }); }

bool Comm::stop() {
  std::unique_lock<std::mutex> lock(mu_);
  stopping_ = true;
  cv_.notify_all();
  // The thread ends once the queue has run. A thread stuck in the backend past its deadline (a peer
  // stopped in the middle of a transfer) never will: it is left behind, so that an error can still
  // unwind and end the job (dist::abort_job) instead of hanging in this destructor.
  while (!thread_done_) {
    if (cv_.wait_for(lock, std::chrono::milliseconds(200), [&] { return thread_done_; })) break;
    if (deadline_ != 0 && now_seconds() > deadline_ + kStallGrace) {
      lock.unlock();
      thread_.detach();
      return false;
    }
  }
  lock.unlock();
  if (thread_.joinable()) thread_.join();
  return true;
}

CommCounters Comm::counters() const {
  std::lock_guard<std::mutex> lock(mu_);
  return counters_;
}

LinkClass Comm::link_class(int a, int b) const {
  if (opts_.ranks_per_node <= 0) return LinkClass::Intra;
  return members_[a] / opts_.ranks_per_node == members_[b] / opts_.ranks_per_node ? LinkClass::Intra
                                                                                  : LinkClass::Inter;
}

void Comm::add_arrival_wait(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  counters_.arrival_s += seconds;
}

std::string Comm::current_call() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_call_;
}

const CudaEvent* Comm::current_ready() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_ready_;
}

bool Comm::timed_out() const {
  std::lock_guard<std::mutex> lock(mu_);
  return now_seconds() > deadline_;
}

bool Comm::stalled(CommError* error) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (deadline_ == 0 || now_seconds() < deadline_ + kStallGrace) return false;
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "rank %d (world rank %d) of group %s: %s is still running %.0f s past dist.timeout_s = %g s: a peer "
                "stopped or died in the middle of the transfer",
                rank_, members_[static_cast<size_t>(rank_)], opts_.name.c_str(), current_call_.c_str(),
                now_seconds() - deadline_, opts_.timeout_s);
  *error = CommError(buf);
  return true;
}

CommError Comm::timeout_error(const std::string& detail) const {
  const std::string call = current_call();
  char head[160];
  std::snprintf(head, sizeof head, "rank %d (world rank %d) of group %s: ", rank_, members_[static_cast<size_t>(rank_)],
                opts_.name.c_str());
  char tail[96];
  std::snprintf(tail, sizeof tail, " did not finish within dist.timeout_s = %g s", opts_.timeout_s);
  return CommError(head + call + tail + (detail.empty() ? "" : "; " + detail));
}

// A ring of N ranks in group order: `steps` steps, each moving step_bytes to the next rank.
Comm::Cost Comm::ring_cost(double step_bytes, int steps, int64_t bytes_to_next) const {
  Cost c;
  const int N = size();
  if (N == 1) return c;
  c.bytes[static_cast<int>(link_class(rank_, (rank_ + 1) % N))] = bytes_to_next;
  if (!opts_.link.emulated()) return c;
  // The slowest link the ring crosses sets the pace of every step.
  double t_step = 0;
  for (int r = 0; r < N; ++r) {
    const Link& l = opts_.link.link(link_class(r, (r + 1) % N));
    if (l.gbytes_per_s <= 0) continue;
    t_step = std::max(t_step, l.seconds(step_bytes));
  }
  c.modeled_s = steps * t_step;
  return c;
}

Comm::Cost Comm::broadcast_cost(int64_t bytes, int root) const {
  Cost c;
  const int N = size();
  if (N == 1) return c;
  // A chain from the root: every rank but the last one forwards the buffer to the next.
  const int last = (root + N - 1) % N;
  if (rank_ != last) c.bytes[static_cast<int>(link_class(rank_, (rank_ + 1) % N))] = bytes;
  if (!opts_.link.emulated()) return c;
  double lat = 0, bw = 0;
  for (int r = 0; r < N; ++r) {
    const Link& l = opts_.link.link(link_class(r, (r + 1) % N));
    if (l.gbytes_per_s <= 0) continue;
    lat = std::max(lat, l.latency_us * 1e-6);
    bw = bw == 0 ? l.gbytes_per_s : std::min(bw, l.gbytes_per_s);
  }
  if (bw > 0) c.modeled_s = (N - 1) * lat + static_cast<double>(bytes) / (bw * 1e9);
  return c;
}

Comm::Cost Comm::all_to_all_cost(const std::vector<int64_t>& send_bytes, const std::vector<int64_t>& recv_bytes) const {
  Cost c;
  int64_t recv[2] = {0, 0};
  bool any[2] = {false, false};
  for (int p = 0; p < size(); ++p) {
    if (p == rank_) continue;  // a rank's own block is a local copy
    const int k = static_cast<int>(link_class(rank_, p));
    c.bytes[k] += send_bytes[p];
    recv[k] += recv_bytes[p];
    any[k] = any[k] || send_bytes[p] > 0 || recv_bytes[p] > 0;
  }
  for (int k = 0; k < 2; ++k) {
    const Link& l = opts_.link.link(static_cast<LinkClass>(k));
    if (!any[k] || l.gbytes_per_s <= 0) continue;
    c.modeled_s = std::max(c.modeled_s, l.seconds(static_cast<double>(std::max(c.bytes[k], recv[k]))));
  }
  return c;
}

void Comm::check_counts(const char* call, const std::vector<int64_t>& counts) const {
  MOELAB_CHECK(static_cast<int>(counts.size()) == size(), call, ": ", counts.size(), " counts for a group of ", size(),
               " ranks (expected one per rank)");
  for (size_t i = 0; i < counts.size(); ++i)
    MOELAB_CHECK(counts[i] >= 0, call, ": count ", counts[i], " for rank ", i, " (expected >= 0)");
}

namespace {
int64_t sum(const std::vector<int64_t>& v) { return std::accumulate(v.begin(), v.end(), int64_t{0}); }
void check_flat(const char* call, const char* name, const Tensor& t, int64_t numel) {
  MOELAB_CHECK(t.defined() || numel == 0, call, ": ", name, " is undefined");
  if (!t.defined()) return;
  MOELAB_CHECK(t.numel() == numel, call, ": ", name, " has ", t.numel(), " elements ", t.shape().str(), ", expected ",
               numel);
}
std::string describe(const char* call, double bytes) { return std::string(call) + " of " + human_bytes(bytes); }
}  // namespace

WorkHandle Comm::all_reduce_async(const Tensor& buf, ReduceOp op, const CudaEvent* ready) {
  MOELAB_CHECK(buf.defined(), "all_reduce: the buffer is undefined");
  check_dtype("all_reduce", buf.dtype(), true);
  const int N = size();
  const int64_t bytes = static_cast<int64_t>(buf.nbytes());
  // Ring all-reduce: N-1 reduce-scatter steps and N-1 all-gather steps of S/N bytes each.
  const Cost cost = ring_cost(static_cast<double>(bytes) / N, 2 * (N - 1), 2 * (N - 1) * bytes / N);
  return enqueue(describe("all_reduce", bytes), cost, [this, buf, op] { run_all_reduce(buf, op); }, ready);
}

WorkHandle Comm::reduce_scatter_async(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts,
                                      ReduceOp op, const CudaEvent* ready) {
  check_counts("reduce_scatter", counts);
  check_flat("reduce_scatter", "in", in, sum(counts));
  check_flat("reduce_scatter", "out", out, counts[rank_]);
  MOELAB_CHECK(!in.defined() || !out.defined() || in.dtype() == out.dtype(), "reduce_scatter: in is ",
               dtype_name(in.dtype()), " but out is ", dtype_name(out.dtype()));
  if (in.defined()) check_dtype("reduce_scatter", in.dtype(), true);
  const int N = size();
  const int64_t bytes = in.defined() ? static_cast<int64_t>(in.nbytes()) : 0;
  const Cost cost = ring_cost(static_cast<double>(bytes) / N, N - 1, (N - 1) * bytes / N);
  return enqueue(describe("reduce_scatter", bytes), cost,
                 [this, in, out, counts, op] { run_reduce_scatter(in, out, counts, op); }, ready);
}

WorkHandle Comm::all_gather_async(const Tensor& in, const Tensor& out, const std::vector<int64_t>& counts) {
  check_counts("all_gather", counts);
  check_flat("all_gather", "in", in, counts[rank_]);
  check_flat("all_gather", "out", out, sum(counts));
  MOELAB_CHECK(!in.defined() || !out.defined() || in.dtype() == out.dtype(), "all_gather: in is ",
               dtype_name(in.dtype()), " but out is ", dtype_name(out.dtype()));
  if (out.defined()) check_dtype("all_gather", out.dtype(), false);
  const int N = size();
  const int64_t bytes = out.defined() ? static_cast<int64_t>(out.nbytes()) : 0;
  const Cost cost = ring_cost(static_cast<double>(bytes) / N, N - 1, (N - 1) * bytes / N);
  return enqueue(describe("all_gather", bytes), cost, [this, in, out, counts] { run_all_gather(in, out, counts); });
}

WorkHandle Comm::all_to_all_v_async(const Tensor& send, const std::vector<int64_t>& send_counts, const Tensor& recv,
                                    const std::vector<int64_t>& recv_counts) {
  check_counts("all_to_all_v (send)", send_counts);
  check_counts("all_to_all_v (recv)", recv_counts);
  check_flat("all_to_all_v", "send", send, sum(send_counts));
  check_flat("all_to_all_v", "recv", recv, sum(recv_counts));
  const Tensor& any = send.defined() ? send : recv;
  if (any.defined()) check_dtype("all_to_all_v", any.dtype(), false);
  const int64_t elem = any.defined() ? static_cast<int64_t>(dtype_size(any.dtype())) : 0;
  std::vector<int64_t> sb(send_counts.size()), rb(recv_counts.size());
  for (size_t p = 0; p < sb.size(); ++p) {
    sb[p] = send_counts[p] * elem;
    rb[p] = recv_counts[p] * elem;
  }
  const Cost cost = all_to_all_cost(sb, rb);
  return enqueue(describe("all_to_all_v", static_cast<double>(sum(sb))), cost,
                 [this, send, send_counts, recv, recv_counts] { run_all_to_all_v(send, send_counts, recv, recv_counts); });
}

WorkHandle Comm::broadcast_async(const Tensor& buf, int root) {
  MOELAB_CHECK(buf.defined(), "broadcast: the buffer is undefined");
  MOELAB_CHECK(root >= 0 && root < size(), "broadcast: root ", root, " is not a rank of a group of ", size());
  check_dtype("broadcast", buf.dtype(), false);
  const int64_t bytes = static_cast<int64_t>(buf.nbytes());
  return enqueue(describe("broadcast", bytes), broadcast_cost(bytes, root), [this, buf, root] { run_broadcast(buf, root); });
}

void Comm::barrier() {
  Cost cost;
  if (opts_.link.emulated() && size() > 1) cost = ring_cost(0, 2 * (size() - 1), 0);
  enqueue("barrier", cost, [this] { run_barrier(); })->wait();
}

void Comm::all_reduce(std::vector<double>& values, ReduceOp op) {
  if (values.empty()) return;
  Tensor t = Tensor::empty({static_cast<int64_t>(values.size())}, DType::F64);
  std::copy(values.begin(), values.end(), t.data<double>());
  all_reduce(t, op);
  std::copy(t.data<double>(), t.data<double>() + values.size(), values.begin());
}

std::unique_ptr<Comm> Comm::split(int color, int key, const std::string& name) {
  // The backend's split is itself a collective of this group: wait until the queue has drained so
  // that it is not interleaved with queued collectives.
  enqueue("split", Cost{}, [] {})->wait();
  return make_split(color, key, name);
}

WorkHandle Comm::enqueue(std::string call, Cost cost, std::function<void()> run, const CudaEvent* ready) {
  auto work = std::make_shared<Work>();
  work->run_ = std::move(run);
  work->comm_ = this;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_) std::rethrow_exception(broken_);
    MOELAB_CHECK(!stopping_, "Comm ", opts_.name, ": a collective after shutdown");
    queue_.push_back(Queued{work, std::move(call), cost, ready});
  }
  cv_.notify_all();
  return work;
}

void Comm::thread_main() {
  for (;;) {
    Queued next;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) {  // stopping, and everything queued has run
        thread_done_ = true;
        cv_.notify_all();
        return;
      }
      next = std::move(queue_.front());
      queue_.pop_front();
    }
    const WorkHandle& work = next.work;
    const Cost cost = next.cost;
    const double t0 = now_seconds();
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(mu_);
      current_call_ = next.call;
      current_ready_ = next.ready;
      deadline_ = t0 + opts_.timeout_s;
      error = broken_;
    }
    if (!error) {
      try {
        work->run_();
        // The emulated link: hold the collective until its modeled time has passed.
        if (cost.modeled_s > 0) {
          const double until = t0 + cost.modeled_s;
          const double left = until - now_seconds();
          if (left > 0) std::this_thread::sleep_for(std::chrono::duration<double>(left));
        }
      } catch (...) {
        error = std::current_exception();
      }
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      deadline_ = 0;
      current_ready_ = nullptr;
      if (error && !broken_) broken_ = error;
      counters_.calls += 1;
      counters_.bytes[0] += cost.bytes[0];
      counters_.bytes[1] += cost.bytes[1];
      counters_.busy_s += now_seconds() - t0;
      counters_.modeled_s += cost.modeled_s;
    }
    {
      std::lock_guard<std::mutex> lock(work->mu_);
      work->done_ = true;
      work->error_ = error;
      work->run_ = nullptr;  // drop the tensors it holds
    }
    work->cv_.notify_all();
  }
}

}  // namespace moelab::dist
