// What the floors above core/ (data/, dist/, train/) may know about the GPU: they never include
// cuda/. Discovery, waiting for queued work, memory, timing events, and the bench's counters. In a
// build without CUDA there is no GPU: cuda_device_count() is 0 and the rest throws, saying why.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moelab {

// True when this build has the CUDA backend AND a GPU is visible now (cached after the first call).
bool cuda_available();
// Visible GPUs (0 without CUDA in the build, without a driver or without a device).
int cuda_device_count();
// Why there is no GPU: "this moelab was built without CUDA ..." or "no GPU is visible ...".
const char* no_cuda_reason();

std::string cuda_device_description(int device);  // "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)"
void cuda_synchronize();                          // waits for all queued GPU work
void cuda_set_device(int device);                 // this thread's GPU (one process per GPU: its local rank)
size_t cuda_free_memory();                        // bytes free on the current device
size_t cuda_total_memory();

// Since the process started: device allocations (cudaMalloc) and host waits for the device
// (synchronous copies, synchronisations, the launchers that read a result back). `moelab bench`
// prints them per step; the steady state should allocate nothing.
struct DeviceCounters {
  uint64_t device_allocations = 0;
  uint64_t host_syncs = 0;
};
DeviceCounters device_counters();

// A point in the GPU's queue (a cudaEvent_t): record() it at a point of the queued work (on the
// default stream, where moelab's kernels run); after a synchronisation, ms_since(earlier) is the
// GPU time between the two. Another stream can wait for it (dist/'s NCCL backend).
class CudaEvent {
 public:
  CudaEvent();
  ~CudaEvent();
  CudaEvent(CudaEvent&& other) noexcept : event_(other.event_) { other.event_ = nullptr; }
  CudaEvent& operator=(CudaEvent&&) = delete;
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;

  void record();
  float ms_since(const CudaEvent& earlier) const;
  void* handle() const { return event_; }  // the cudaEvent_t, for dist/'s NCCL backend

 private:
  void* event_;
};

}  // namespace moelab
