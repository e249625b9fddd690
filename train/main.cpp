// The `moelab` command line. Every subcommand is a function here; the work lives in the library.
//   moelab info                 version, build options, CPU threads, visible GPUs
// Later issues add: prepare, train, eval, sample, export, bench (listed in `moelab --help` only
// once they exist).
#include <omp.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>

#include "core/allocator.h"
#include "core/cuda_dispatch.h"
#include "moelab/build_info.h"
#if MOELAB_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace {

const char* on_off(bool b) { return b ? "on" : "off"; }

int run_info() {
  using moelab::BuildInfo;
  std::printf("moelab %s (%s build)\n", MOELAB_VERSION, MOELAB_BUILD_TYPE);
  std::printf("build options: CUDA %s%s%s, NCCL %s, MPI %s, native %s, sanitize %s\n", on_off(BuildInfo::cuda),
              BuildInfo::cuda ? " (archs " : "", BuildInfo::cuda ? MOELAB_BUILD_CUDA_ARCHS ")" : "",
              on_off(BuildInfo::nccl), on_off(BuildInfo::mpi), on_off(BuildInfo::native), on_off(BuildInfo::sanitize));
  std::printf("CPU threads: %d (OMP_NUM_THREADS sets it)\n", omp_get_max_threads());
  const int gpus = moelab::cuda_device_count();
  if (gpus == 0) {
    std::printf("GPUs: none%s\n", BuildInfo::cuda ? "" : " (built without CUDA)");
    return 0;
  }
  std::printf("GPUs: %d\n", gpus);
#if MOELAB_WITH_CUDA
  for (int i = 0; i < gpus; ++i) std::printf("  cuda:%d %s\n", i, moelab::cuda::device_description(i).c_str());
#endif
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"moelab: pretrain DeepSeek-V3-style Mixture-of-Experts transformers on a CPU or a few GPUs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("moelab ") + MOELAB_VERSION);

  int rc = 0;  // the exit code of the subcommand that ran
  CLI::App* info = app.add_subcommand("info", "Print the version, build options, CPU threads and visible GPUs");
  info->callback([&]() { rc = run_info(); });

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moelab: error: %s\n", e.what());
    return 1;
  }
  return rc;
}
