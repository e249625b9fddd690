// The process group of a run and its communicator backends (dist/comm.h). The MPI functions live in
// dist/mpi_comm.cpp, or in dist/no_mpi.cpp in a build without MPI (there they throw saying so, and
// launched() is false); the NCCL ones in dist/nccl_comm.cpp or dist/no_nccl.cpp likewise.
#pragma once

#include <memory>
#include <string>

#include "dist/comm.h"

namespace moelab::dist {

// Where this process sits, read from the launcher's environment before MPI starts (mpirun's
// OMPI_COMM_WORLD_*, PMIx's PMIX_RANK, Slurm's SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID).
// Without a launcher: rank 0 of 1.
struct WorldInfo {
  int rank = 0, size = 1, local_rank = 0;
};
WorldInfo world_from_environment();

// MPI for the whole process: MPI_Init_thread (MPI_THREAD_MULTIPLE: every group's communication
// thread calls MPI) unless MPI is already running, and MPI_Finalize at its end when it started it.
// A process that was not launched by mpirun/srun never needs one.
class MpiSession {
 public:
  MpiSession();
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

 private:
  bool owns_ = false;
};
bool mpi_built();  // false in a build without MPI
// The world group over MPI (the MpiSession must be alive).
std::unique_ptr<Comm> mpi_world(const CommOptions& opts);
// Ends every process of the job (MPI_Abort): after an error that leaves peers waiting in a
// collective. Should MPI_Abort block (a thread stuck in MPI), the process exits with exit_code after
// a few seconds, which the launcher turns into the end of the job. Does nothing when MPI is not
// running.
void abort_job(int exit_code);

// The world group over NCCL: one process per GPU (cudaSetDevice(local_rank)); the unique id is
// broadcast over `bootstrap` (an MPI group of the same ranks). Tensors must be on CUDA.
bool nccl_built();
std::unique_ptr<Comm> nccl_world(const CommOptions& opts, Comm& bootstrap, int local_rank);

}  // namespace moelab::dist
