// The world group the `mpi` tests share (created on first use, ended before MPI_Finalize).
#pragma once

#include "dist/comm.h"

namespace moelab::testing_mpi {

dist::Comm& world();  // MPI backend, a generous timeout (a failing test must not hang the suite)
void shutdown();

}  // namespace moelab::testing_mpi
