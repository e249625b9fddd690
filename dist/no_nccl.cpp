// The NCCL half of dist/backends.h in a build without NCCL (no CUDA, or NCCL not found): the MPI
// backend carries every collective; asking for NCCL throws one clear error.
#include "dist/backends.h"

namespace moelab::dist {

bool nccl_built() { return false; }
std::unique_ptr<Comm> nccl_world(const CommOptions&, Comm&, int) {
  throw Error("dist.backend = nccl: this moelab was built without NCCL (it needs the CUDA build and NCCL next to "
              "the CUDA toolkit, or NCCL_HOME); use dist.backend = mpi");
}

}  // namespace moelab::dist
