// The one switch between the CPU reference and the CUDA launchers inside core/.
// MOELAB_WITH_CUDA is a compile definition of moelab_core when the CUDA backend is built; code
// under it may include cuda/ launcher headers. Without it an op on a CUDA tensor must throw
// (MOELAB_NO_CUDA names the op), never fall back silently to the CPU.
#pragma once

#include "core/check.h"

#ifndef MOELAB_WITH_CUDA
#define MOELAB_WITH_CUDA 0
#endif

#define MOELAB_NO_CUDA(op) MOELAB_FAIL(op, ": this moelab was built without CUDA (configure with -DMOELAB_CUDA=ON)")
