// The `mpi` suites' main: run under mpirun (tests/CMakeLists.txt runs it with 2, 3 and 4 ranks).
// Every rank runs every test (the collectives need all of them); rank 0 prints GoogleTest's usual
// report, the other ranks print only their failures, prefixed with their rank, and every rank's
// exit status counts (mpirun fails when any rank fails).
#include <gtest/gtest.h>

#include <cstdio>

#include "dist/backends.h"
#include "tests/mpi/mpi_env.h"

namespace {

class RankFailurePrinter : public testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: %s\n", rank_, r.file_name() ? r.file_name() : "?", r.line_number(),
                   r.message());
  }

 private:
  int rank_;
};

}  // namespace

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  moelab::dist::MpiSession session;
  const int rank = moelab::testing_mpi::world().rank();
  if (rank != 0) {
    testing::TestEventListeners& listeners = testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(rank));
  }
  const int rc = RUN_ALL_TESTS();
  moelab::testing_mpi::shutdown();
  return rc;
}
