// Cross-entropy kernels. Forward: one block per row; each thread keeps an online (max, sum-exp) over
// the columns it visits (column tid, tid + blockDim, ... : V in chunks of the block size), then the
// block takes the max of the maxima and the sum of the rescaled sums (block_max / block_sum: fixed
// order). The loss sum and the valid count come from one block that walks the rows in a fixed
// pattern and reduces in a fixed tree, in double, into the device statistics. Backward:
// elementwise from the saved lse and the statistics' n_valid. Nothing is copied to the host.
#include <cuda_bf16.h>

#include <string>
#include <type_traits>

#include "cuda/check.h"
#include "cuda/cross_entropy.h"
#include "cuda/device_util.cuh"

namespace moelab::cuda {

namespace {

constexpr int kRowThreads = 256;   // threads per row in the forward
constexpr int kScanThreads = 1024; // the single block of the scan (a power of two: the tree below)
constexpr int kGradThreads = 256;  // backward: threads per block
constexpr int kGradCols = 4096;    // backward: columns per block (each thread 16)

template <typename T>
__global__ void ce_forward_kernel(const T* logits, const int32_t* targets, float* losses, float* lse, int64_t vocab,
                                  int ignore_index) {
  __shared__ float scratch[kWarp];
  const int64_t row = blockIdx.x;
  const T* x = logits + row * vocab;
  float m = -INFINITY, s = 0.0f;  // this thread's running max and sum of e^(x - m)
  for (int64_t d = threadIdx.x; d < vocab; d += blockDim.x) {
    const float v = load(x, d);
    if (v > m) {
      s = s * expf(m - v) + 1.0f;  // expf(-inf) = 0 on the first element
      m = v;
    } else if (v != -INFINITY) {  // -inf adds e^-inf = 0 (and -inf - -inf would be NaN)
      s += expf(v - m);  // a NaN logit makes s NaN, as on the CPU
    }
  }
  const float row_max = block_max(m, scratch);
  // A thread that saw no column (V < blockDim) or only -inf adds nothing; one that saw a NaN
  // passes it on (s is NaN), so a NaN logit makes the row's loss NaN whatever the thread layout.
  const float mine = s == 0.0f ? 0.0f : s * expf(m - row_max);
  const float sum = block_sum(mine, scratch);
  if (threadIdx.x == 0) {
    const float log_sum = logf(sum);
    lse[row] = row_max + log_sum;
    const int32_t t = targets[row];
    float loss;
    if (t == ignore_index) loss = 0.0f;
    else if (t < 0 || t >= vocab) loss = NAN;  // never read outside the row; the scan reports it
    else loss = (row_max - load(x, t)) + log_sum;  // the CPU's form (see core/ops/cross_entropy.cpp)
    losses[row] = loss;
  }
}

// One block: thread i visits rows i, i + kScanThreads, ... ; then a fixed tree over the threads.
__global__ void ce_scan_kernel(const int32_t* targets, const float* losses, int64_t rows, int64_t vocab,
                               int ignore_index, double* stats) {
  __shared__ double sum_s[kScanThreads];
  __shared__ long long count_s[kScanThreads];
  __shared__ long long bad_s[kScanThreads];
  constexpr long long kNone = 0x7fffffffffffffffLL;
  double sum = 0.0;
  long long count = 0, bad = kNone;
  for (int64_t r = threadIdx.x; r < rows; r += kScanThreads) {
    const int32_t t = targets[r];
    if (t == ignore_index) continue;
    if (t < 0 || t >= vocab) {
      bad = bad < r ? bad : r;
      continue;
    }
    ++count;
    if (losses) sum += static_cast<double>(losses[r]);
  }
  sum_s[threadIdx.x] = sum;
  count_s[threadIdx.x] = count;
  bad_s[threadIdx.x] = bad;
  __syncthreads();
  for (int half = kScanThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      sum_s[threadIdx.x] += sum_s[threadIdx.x + half];
      count_s[threadIdx.x] += count_s[threadIdx.x + half];
      const long long other = bad_s[threadIdx.x + half];
      if (other < bad_s[threadIdx.x]) bad_s[threadIdx.x] = other;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {  // the layout of core/ops/cross_entropy.h's stats
    stats[0] = sum_s[0];
    stats[1] = static_cast<double>(count_s[0]);
    stats[2] = bad_s[0] == kNone ? -1.0 : static_cast<double>(bad_s[0]);
    stats[3] = bad_s[0] == kNone ? 0.0 : static_cast<double>(targets[bad_s[0]]);
  }
}

// Block (x: row, y: column chunk of kGradCols); thread d writes columns chunk + d, + kGradThreads, ...
template <typename T>
__global__ void ce_backward_kernel(const T* logits, const int32_t* targets, const float* lse, const double* stats,
                                   T* grad_logits, int64_t vocab, int ignore_index, double grad_loss) {
  const int64_t row = blockIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kGradCols;
  const int64_t end = begin + kGradCols < vocab ? begin + kGradCols : vocab;
  const T* x = logits + row * vocab;
  T* g = grad_logits + row * vocab;
  const int32_t t = targets[row];
  if (t == ignore_index) {
    for (int64_t d = begin + threadIdx.x; d < end; d += kGradThreads) store(g, d, 0.0f);
    return;
  }
  // The CPU reference's scale: grad_loss / n_valid in double, then rounded to f32.
  const double n_valid = stats[1];
  const float scale = n_valid > 0.0 ? static_cast<float>(grad_loss / n_valid) : 0.0f;
  const float l = lse[row];
  for (int64_t d = begin + threadIdx.x; d < end; d += kGradThreads) {
    float v = scale * expf(load(x, d) - l);
    if (d == t) v -= scale;
    store(g, d, v);
  }
}

}  // namespace

void cross_entropy_forward(const CrossEntropyForwardParams& p) {
  if (p.rows > 0) {
    with_act_type(p.bf16, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      ce_forward_kernel<<<static_cast<unsigned>(p.rows), kRowThreads, 0, p.stream>>>(
          static_cast<const T*>(p.logits), p.targets, p.losses, p.lse, p.vocab, p.ignore_index);
    });
    CUDA_CHECK_LAUNCH();
  }
  ce_scan_kernel<<<1, kScanThreads, 0, p.stream>>>(p.targets, p.losses, p.rows, p.vocab, p.ignore_index, p.stats);
  CUDA_CHECK_LAUNCH();
}

void cross_entropy_backward(const CrossEntropyBackwardParams& p) {
  if (p.rows == 0) return;
  const unsigned chunks = blocks_for(p.vocab, kGradCols);
  if (chunks > 65535u)  // gridDim.y's limit: V up to 268M columns
    throw CudaError("cross_entropy_backward: V = " + std::to_string(p.vocab) + " is too large for the grid");
  const dim3 grid(static_cast<unsigned>(p.rows), chunks);
  with_act_type(p.bf16, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    ce_backward_kernel<<<grid, kGradThreads, 0, p.stream>>>(static_cast<const T*>(p.logits), p.targets, p.lse,
                                                            p.stats, static_cast<T*>(p.grad_logits), p.vocab,
                                                            p.ignore_index, p.grad_loss);
  });
  CUDA_CHECK_LAUNCH();
}

}  // namespace moelab::cuda
