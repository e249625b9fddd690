#include "train/runtime.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

#include "core/device.h"

namespace moelab {

Runtime make_runtime(const std::string& device, const std::string& precision) {
  Runtime rt;
  MOELAB_CHECK(device == "cpu" || device == "cuda", "device '", device, "' is not one of cpu, cuda");
  MOELAB_CHECK(precision == "auto" || precision == "fp32" || precision == "bf16" || precision == "fp8" ||
                   precision == "fp8_pow2",
               "precision '", precision, "' is not one of auto, fp32, bf16, fp8, fp8_pow2");
  rt.fp8.enabled = precision == "fp8" || precision == "fp8_pow2";
  rt.fp8.pow2_scales = precision == "fp8_pow2";
  if (device == "cpu") {
    rt.cpu_bf16 = precision == "bf16";  // f32 activations, bf16 GEMM operands
    return rt;
  }
  MOELAB_CHECK(cuda_available(), "device cuda: ", no_cuda_reason());
  rt.device = Device::CUDA;
  rt.act = precision == "fp32" ? DType::F32 : DType::BF16;
  rt.gpu = std::make_unique<GpuContext>();
  return rt;
}

std::string Runtime::describe() const {
  std::string s = std::string(device_name(device)) + (act == DType::BF16 ? " bf16 (f32 master weights)" : " fp32");
  if (cpu_bf16) s += ", Linear and head GEMMs on bf16 operands (f32 sums, f32 master weights)";
  if (fp8.enabled) {
    std::string how = device == Device::CPU ? "exact emulation" : "";
    if (fp8.pow2_scales) how += std::string(how.empty() ? "" : ", ") + "power-of-two scales";
    s += ", Linear GEMMs in fp8" + (how.empty() ? "" : " (" + how + ")");
  }
  if (device == Device::CUDA) s += " on " + cuda_device_description(0);
  return s;
}

void Runtime::synchronize() const {
  if (device == Device::CUDA) cuda_synchronize();
}

namespace {
// The CUDA arena's room beyond the layers' count. The count is an upper bound of what one process's
// forward + backward allocate (every allocation rounded up to the arena's alignment, dropless routing,
// every expert's blocks padded), and tests/nn/test_cost.cpp holds it within 10% of the measured peak
// for every preset. The margin covers what it cannot see:
// - 10% of the prediction, that test's tolerance, for what no CPU run measures: the allocations of
//   bf16 mixed precision alone (the router's f32 copy of its input and the gradient narrowed back)
//   are counted but only ever made on CUDA;
// - 64 MiB: the scratch CUDA ops take from the arena above its top and give back when they return
//   (core/exec.h): sort buffers, per-block partials and counters, O(tokens x K) numbers, a few MiB
//   at 64K tokens; and room for cuBLASLt's 32 MiB workspace, were it carved from the arena too
//   rather than held by GpuContext.
// Not covered: an expert-parallel dispatch, whose rank receives a data-dependent number of rows.
constexpr double kArenaMarginFraction = 0.10;
constexpr size_t kArenaMarginBytes = size_t{64} << 20;
}  // namespace

size_t Runtime::arena_bytes(double predicted) const {
  double want = (1.0 + kArenaMarginFraction) * predicted + static_cast<double>(kArenaMarginBytes);
  if (device == Device::CPU) {
    const double ram = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
    MOELAB_CHECK(want <= ram, "one training step of this config needs about ", std::lround(predicted / (1 << 30)),
                 " GiB of activations (the layers' own count, core/nn/cost.h) but this machine has ",
                 std::lround(ram / (1 << 30)), " GiB of memory: lower train.batch_size or train.seq_len");
    return std::max(size_t{8} << 30, static_cast<size_t>(want) / Arena::kAlignment * Arena::kAlignment);
  }
  const double free_bytes = static_cast<double>(cuda_free_memory()) - static_cast<double>(size_t{1} << 30);
  MOELAB_CHECK(free_bytes > static_cast<double>(size_t{256} << 20), "the GPU has ",
               (free_bytes + (size_t{1} << 30)) / (1 << 20), " MiB free after the model: too little for activations");
  want = std::min(want, free_bytes);
  return static_cast<size_t>(want) / Arena::kAlignment * Arena::kAlignment;
}

namespace {
void finish_placement(Model& model, const Runtime& rt) {
  if (rt.act == DType::BF16) model.params().add_compute_copy(DType::BF16);
}
}  // namespace

std::unique_ptr<Model> new_model(const ModelConfig& cfg, uint64_t seed, const Runtime& rt) {
  auto model = std::make_unique<Model>(cfg);
  model->allocate(rt.device, DType::F32);
  model->initialize(seed);
  finish_placement(*model, rt);
  return model;
}

std::unique_ptr<Model> place_model(std::unique_ptr<Model> model, const Runtime& rt) {
  MOELAB_CHECK(model->params().flat_params().device() == Device::CPU &&
                   model->params().flat_params().dtype() == DType::F32,
               "place_model: expected a CPU f32 model, got ", model->params().flat_params().str());
  if (rt.device == Device::CPU) return model;
  auto placed = std::make_unique<Model>(model->config());
  placed->allocate(rt.device, DType::F32);
  placed->params().flat_params().copy_from(model->params().flat_params());
  placed->buffers().flat_params().copy_from(model->buffers().flat_params());
  finish_placement(*placed, rt);
  return placed;
}

}  // namespace moelab
