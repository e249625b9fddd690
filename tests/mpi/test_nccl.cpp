// The NCCL backend (dist/nccl_comm.cpp) against the MPI one on the same values: CUDA tensors, one
// process per GPU. Skipped without a GPU, without NCCL in the build, or with more processes than
// GPUs (NCCL refuses two processes on one GPU); `ctest -L gpu` runs it with one process, and
// `mpirun -np <GPUs> moelab_mpi_tests --gtest_filter='NcclComm*'` on a machine with several.
#include <gtest/gtest.h>

#include <numeric>

#include "core/device.h"
#include "dist/backends.h"
#include "tests/harness.h"
#include "tests/mpi/mpi_env.h"

namespace moelab {
namespace {

std::unique_ptr<dist::Comm> nccl_or_skip() {
  dist::Comm& world = testing_mpi::world();
  if (!dist::nccl_built() || !cuda_available() || world.size() > cuda_device_count()) return nullptr;
  const int local = dist::world_from_environment().local_rank;
  cuda_set_device(local);
  return dist::nccl_world(world.options(), world, local);
}

Tensor values(int rank, int64_t n, DType dt) {
  Tensor t = testing::randn({n}, DType::F32, 100 + static_cast<uint64_t>(rank));
  return dt == DType::F32 ? t : t.to(dt);
}

TEST(NcclComm, CollectivesMatchTheMpiBackend) {
  const std::unique_ptr<dist::Comm> nccl = nccl_or_skip();
  if (!nccl) GTEST_SKIP() << "needs NCCL in the build and one GPU per process";
  dist::Comm& mpi = testing_mpi::world();
  const int N = mpi.size(), me = mpi.rank();
  EXPECT_STREQ(nccl->backend(), "nccl");
  // all_reduce (sum, mean), odd and empty sizes.
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{1001}}) {
    for (dist::ReduceOp op : {dist::ReduceOp::Sum, dist::ReduceOp::Average}) {
      Tensor host = values(me, n, DType::F32);
      Tensor dev = host.to(Device::CUDA);
      mpi.all_reduce(host, op);
      nccl->all_reduce(dev, op);
      EXPECT_TRUE(testing::close(dev.to(Device::CPU), host, 1e-5, 1e-5)) << "all_reduce n=" << n;
    }
  }
  // reduce_scatter and all_gather with uneven counts, all_to_all_v, broadcast.
  std::vector<int64_t> counts(static_cast<size_t>(N));
  for (int r = 0; r < N; ++r) counts[static_cast<size_t>(r)] = 3 + r;
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const Tensor in = values(me, total, DType::F32);
  Tensor rs_host = Tensor::empty({counts[static_cast<size_t>(me)]}, DType::F32);
  Tensor rs_dev = Tensor::empty({counts[static_cast<size_t>(me)]}, DType::F32, Device::CUDA);
  mpi.reduce_scatter(in, rs_host, counts, dist::ReduceOp::Sum);
  nccl->reduce_scatter(in.to(Device::CUDA), rs_dev, counts, dist::ReduceOp::Sum);
  EXPECT_TRUE(testing::close(rs_dev.to(Device::CPU), rs_host, 1e-5, 1e-5)) << "reduce_scatter";
  Tensor ag_host = Tensor::empty({total}, DType::F32), ag_dev = Tensor::empty({total}, DType::F32, Device::CUDA);
  const Tensor mine = values(me, counts[static_cast<size_t>(me)], DType::F32);
  mpi.all_gather(mine, ag_host, counts);
  nccl->all_gather(mine.to(Device::CUDA), ag_dev, counts);
  EXPECT_TRUE(testing::close(ag_dev.to(Device::CPU), ag_host, 0, 0)) << "all_gather";
  Tensor a2a_host = Tensor::empty({total}, DType::F32), a2a_dev = Tensor::empty({total}, DType::F32, Device::CUDA);
  const std::vector<int64_t> send_counts(static_cast<size_t>(N), counts[static_cast<size_t>(me)]);
  const Tensor send = values(me, counts[static_cast<size_t>(me)] * N, DType::F32);
  mpi.all_to_all_v(send, send_counts, a2a_host, counts);
  nccl->all_to_all_v(send.to(Device::CUDA), send_counts, a2a_dev, counts);
  EXPECT_TRUE(testing::close(a2a_dev.to(Device::CPU), a2a_host, 0, 0)) << "all_to_all_v";
  Tensor b_host = values(me, 77, DType::F32);
  Tensor b_dev = b_host.to(Device::CUDA);
  mpi.broadcast(b_host, 0);
  nccl->broadcast(b_dev, 0);
  EXPECT_TRUE(testing::close(b_dev.to(Device::CPU), b_host, 0, 0)) << "broadcast";
  nccl->barrier();
  const std::unique_ptr<dist::Comm> half = nccl->split(me % 2, me, "half");
  EXPECT_EQ(half->size(), (N + 1 - me % 2) / 2);
}

}  // namespace
}  // namespace moelab
