// world_from_environment (dist/backends.h): the launcher's variables, read before MPI starts, so
// that a process can tell whether it is one of several without initialising MPI.
#include <cstdlib>

#include "dist/backends.h"

namespace moelab::dist {

namespace {
int env_int(const char* a, const char* b, const char* c, int fallback) {
  for (const char* name : {a, b, c}) {
    if (!name) continue;
    if (const char* v = std::getenv(name)) return std::atoi(v);
  }
  return fallback;
}

}  // namespace

WorldInfo world_from_environment() {
  WorldInfo w;
  w.size = env_int("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS", 1);
  w.rank = env_int("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID", 0);
  w.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", 0);
  MOELAB_CHECK(w.size >= 1 && w.rank >= 0 && w.rank < w.size, "the launcher says rank ", w.rank, " of ", w.size,
               " processes (OMPI_COMM_WORLD_* / PMIX_RANK / SLURM_* variables)");
  return w;
}

}  // namespace moelab::dist
