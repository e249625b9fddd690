// core/device.h over cuda/runtime.h (the kernels' backend, or its stub in a build without CUDA).
#include "core/device.h"

#include "cuda/runtime.h"
#include "moelab/build_info.h"

namespace moelab {

int cuda_device_count() { return cuda::device_count(); }
void cuda_set_device(int device) { cuda::set_device(device); }

bool cuda_available() {
  static const bool available = cuda_device_count() > 0;  // a fact of the process, asked once
  return available;
}

const char* no_cuda_reason() {
  return BuildInfo::cuda ? "no GPU is visible (no driver, no device, or CUDA_VISIBLE_DEVICES hides them)"
                         : "this moelab was built without CUDA (configure with -DMOELAB_CUDA=ON)";
}

std::string cuda_device_description(int device) { return cuda::device_description(device); }
void cuda_synchronize() { cuda::synchronize(); }
size_t cuda_free_memory() { return cuda::free_memory(); }
size_t cuda_total_memory() { return cuda::total_memory(); }

DeviceCounters device_counters() {
  const cuda::Counters c = cuda::counters();
  return DeviceCounters{c.device_allocations, c.host_syncs};
}

CudaEvent::CudaEvent() : event_(cuda::event_create()) {}
CudaEvent::~CudaEvent() { cuda::event_destroy(event_); }
void CudaEvent::record() { cuda::event_record(event_); }
float CudaEvent::ms_since(const CudaEvent& earlier) const { return cuda::event_elapsed_ms(earlier.event_, event_); }

}  // namespace moelab
