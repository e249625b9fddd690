// The MPI half of dist/backends.h in a build without MPI (MOELAB_MPI=OFF, or no MPI found): one
// process works as always; anything that needs MPI throws one clear error.
#include "dist/backends.h"

namespace moelab::dist {

namespace {
[[noreturn]] void no_mpi(const char* what) {
  throw Error(std::string(what) + ": this moelab was built without MPI (install libopenmpi-dev and rebuild, or "
              "configure with -DMOELAB_MPI=ON to require it)");
}
}  // namespace

bool mpi_built() { return false; }
MpiSession::MpiSession() { no_mpi("several processes"); }
MpiSession::~MpiSession() = default;
std::unique_ptr<Comm> mpi_world(const CommOptions&) { no_mpi("mpi_world"); }
void abort_job(int) {}

}  // namespace moelab::dist
