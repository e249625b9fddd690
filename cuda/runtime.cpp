// Host-only CUDA runtime glue (compiled as .cpp: TOOLCHAIN.md, 5x faster than .cu).
#include "cuda/runtime.h"

#include <atomic>
#include <cstdio>

#include "cuda/check.h"

namespace moelab::cuda {

namespace {
std::atomic<uint64_t> g_device_allocations{0};
std::atomic<uint64_t> g_host_syncs{0};
}  // namespace

Counters counters() { return Counters{g_device_allocations.load(), g_host_syncs.load()}; }
void count_host_sync() { g_host_syncs.fetch_add(1, std::memory_order_relaxed); }

int device_count() {
  int count = 0;  // not written by cudaGetDeviceCount on error
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so that later calls start clean
    return 0;
  }
  return count;
}

std::string device_description(int device) {
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %.1f GiB)", prop.name, prop.major, prop.minor,
                static_cast<double>(prop.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

void* malloc_device(size_t bytes) {
  void* ptr = nullptr;
  g_device_allocations.fetch_add(1, std::memory_order_relaxed);
  CUDA_CHECK(cudaMalloc(&ptr, bytes));
  return ptr;
}

void* malloc_pinned(size_t bytes) {
  void* ptr = nullptr;
  CUDA_CHECK(cudaMallocHost(&ptr, bytes));
  return ptr;
}

void free_pinned(void* ptr) {
  if (ptr) cudaFreeHost(ptr);  // from destructors: never throws (see free_device)
}

void free_device(void* ptr) {
  // Called from destructors: never throw. A failure here means the context is already broken and
  // the next checked call reports it.
  if (ptr) cudaFree(ptr);
}

void memcpy_h2d(void* dst, const void* src, size_t bytes) {
  count_host_sync();
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void memcpy_d2h(void* dst, const void* src, size_t bytes) {
  count_host_sync();
  CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void memcpy_d2d(void* dst, const void* src, size_t bytes) { CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice)); }
void memset_device(void* dst, int value, size_t bytes) { CUDA_CHECK(cudaMemset(dst, value, bytes)); }
void set_device(int device) { CUDA_CHECK(cudaSetDevice(device)); }
void synchronize() {
  count_host_sync();
  CUDA_CHECK(cudaDeviceSynchronize());
}

size_t free_memory() {
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return free_bytes;
}

size_t total_memory() {
  size_t free_bytes = 0, total_bytes = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  return total_bytes;
}

void* event_create() {
  cudaEvent_t e = nullptr;
  CUDA_CHECK(cudaEventCreate(&e));
  return e;
}
void event_destroy(void* event) {
  if (event) cudaEventDestroy(static_cast<cudaEvent_t>(event));  // never throws: used in destructors
}
void event_record(void* event) { CUDA_CHECK(cudaEventRecord(static_cast<cudaEvent_t>(event), nullptr)); }
float event_elapsed_ms(void* start, void* end) {
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start), static_cast<cudaEvent_t>(end)));
  return ms;
}

}  // namespace moelab::cuda
