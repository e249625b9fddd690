// Device discovery and raw memory for core/'s CUDA allocator and copies. Plain pointers only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace moelab::cuda {

// Number of usable GPUs; 0 when there is no driver, no device or only the stub library
// (cudaGetDeviceCount fails then and leaves its argument unwritten: TOOLCHAIN.md).
int device_count();
std::string device_description(int device);  // "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)"

void* malloc_device(size_t bytes);
void free_device(void* ptr);
// Page-locked host memory (cudaMallocHost): copies to and from the device run at full speed and
// can be asynchronous. Slow to allocate: keep and reuse it.
void* malloc_pinned(size_t bytes);
void free_pinned(void* ptr);
void memcpy_h2d(void* dst, const void* src, size_t bytes);
void memcpy_d2h(void* dst, const void* src, size_t bytes);
void memcpy_d2d(void* dst, const void* src, size_t bytes);
void memset_device(void* dst, int value, size_t bytes);
void synchronize();
void set_device(int device);  // the calling thread's current GPU (cudaSetDevice)
size_t free_memory();   // bytes free on the current device (cudaMemGetInfo)
size_t total_memory();  // bytes on the current device

// Timing events (a cudaEvent_t behind the pointer) on the default stream: record at a point of
// the queued work, read the milliseconds between two after a synchronize().
void* event_create();
void event_destroy(void* event);
void event_record(void* event);
float event_elapsed_ms(void* start, void* end);

// Process-wide statistics for `moelab bench` (nothing else reads them): device allocations, and the
// times the host waited for the device (a synchronous copy, a device or stream synchronisation).
// They count; they decide nothing, so they are the one piece of global state in cuda/.
struct Counters {
  uint64_t device_allocations = 0;
  uint64_t host_syncs = 0;
};
Counters counters();
void count_host_sync();  // for the launchers that wait for their stream

}  // namespace moelab::cuda
