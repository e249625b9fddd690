// The CUDA stream as launchers take it, without the toolkit's headers: core/ includes the launcher
// headers of cuda/ in every build, also where no CUDA toolkit is installed (cuda/no_cuda.cpp then
// defines the launchers). CUstream_st is the runtime's own opaque stream type, so a Stream IS a
// cudaStream_t and converts to nothing else; nullptr is the legacy default stream.
#pragma once

struct CUstream_st;

namespace moelab::cuda {

using Stream = CUstream_st*;

}  // namespace moelab::cuda
