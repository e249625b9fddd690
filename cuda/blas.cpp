// cuBLASLt glue (host only, so a .cpp: TOOLCHAIN.md). See cuda/blas.h for the row-major contract.
#include "cuda/blas.h"

#include <cublasLt.h>

#include <algorithm>
#include <array>
#include <map>
#include <stdexcept>
#include <string>

#include "cuda/check.h"
#include "cuda/runtime.h"

namespace moelab::cuda {

namespace {

cudaDataType_t data_type(GemmType t) { return t == GemmType::BF16 ? CUDA_R_16BF : CUDA_R_32F; }

size_t element_bytes(GemmType t) { return t == GemmType::BF16 ? 2 : 4; }

// The largest power of two (<= 256) dividing the address of every matrix of a batch (the base
// and the stride in bytes): cuBLASLt assumes 256-byte aligned operands unless told otherwise, and
// sub-tensors (an expert's rows) often are not.
uint32_t alignment_of(const void* p, int64_t batch = 1, int64_t stride_bytes = 0) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (batch > 1) a |= static_cast<uintptr_t>(stride_bytes);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

// Everything the descriptors and the heuristic's choice depend on.
using PlanKey = std::array<int64_t, 16>;

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLAS's A, B and C (= D)
  cublasLtMatmulAlgo_t algo{};
  bool has_algo = true;  // false: cuBLASLt has no algorithm for this FP8 shape (gemm_fp8 returns false)

  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    // Destructors must not throw: a failed destroy at shutdown is ignored.
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// Asks the heuristic for the best algorithm of plan's descriptor and layouts, within our workspace
// and for operands whose addresses are multiples of the given alignments (bytes; cuBLASLt's A, B
// and C = D). Returns the status of the query and its setup; *found says whether it gave one.
cublasStatus_t best_algo(cublasLtHandle_t handle, const Plan& plan, uint32_t align_a, uint32_t align_b,
                         uint32_t align_c, cublasLtMatmulAlgo_t* algo, bool* found) {
  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = Blas::kWorkspaceBytes;
  const std::pair<cublasLtMatmulPreferenceAttributes_t, uint32_t> aligns[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c}};
  cublasStatus_t status =
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  for (const auto& [attr, value] : aligns)
    if (status == CUBLAS_STATUS_SUCCESS) status = cublasLtMatmulPreferenceSetAttribute(pref, attr, &value, sizeof(value));
  cublasLtMatmulHeuristicResult_t result{};
  int count = 0;
  if (status == CUBLAS_STATUS_SUCCESS)
    status = cublasLtMatmulAlgoGetHeuristic(handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1, &result, &count);
  cublasLtMatmulPreferenceDestroy(pref);
  *found = status == CUBLAS_STATUS_SUCCESS && count > 0;
  if (*found) *algo = result.algo;
  return status;
}

void set_batch(cublasLtMatrixLayout_t layout, int64_t batch, int64_t stride) {
  if (batch <= 1) return;
  const auto count = static_cast<int32_t>(batch);
  CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &count, sizeof(count)));
  CUBLAS_CHECK(
      cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
}

std::string describe(const GemmParams& p) {
  return "gemm m=" + std::to_string(p.m) + " n=" + std::to_string(p.n) + " k=" + std::to_string(p.k) +
         " trans_a=" + std::to_string(p.trans_a) + " trans_b=" + std::to_string(p.trans_b) +
         " ab=" + (p.ab_type == GemmType::BF16 ? "bf16" : "f32") + " c=" + (p.c_type == GemmType::BF16 ? "bf16" : "f32") +
         " batch=" + std::to_string(p.batch);
}

}  // namespace

struct Blas::Impl {
  cublasLtHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::map<PlanKey, std::unique_ptr<Plan>> plans;
  int fp8_arch = -1;  // 10 * major + minor of this Blas's device, queried by the first gemm_fp8
  // gemm_fp8's scales in cuBLASLt's layouts (both operands), grown on first use of a larger shape.
  void* fp8_scales = nullptr;
  size_t fp8_scales_bytes = 0;

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {  // also after a constructor that threw half-way (Blas owns a complete Impl by then)
    plans.clear();
    free_device(fp8_scales);
    if (workspace) cudaFree(workspace);
    if (handle) cublasLtDestroy(handle);
  }
  const Plan& plan_for(const GemmParams& p);
  const Plan& fp8_plan_for(const Fp8GemmParams& p, const float* scales_first, const float* scales_second);
  void* fp8_scale_buffer(size_t bytes);
  // The alignments cuBLASLt may assume for A, B and C (ours, row-major names).
  std::array<uint32_t, 3> alignments(const GemmParams& p) const {
    const size_t ab = element_bytes(p.ab_type), c = element_bytes(p.c_type);
    return {alignment_of(p.a, p.batch, p.stride_a * static_cast<int64_t>(ab)),
            alignment_of(p.b, p.batch, p.stride_b * static_cast<int64_t>(ab)),
            alignment_of(p.c, p.batch, p.stride_c * static_cast<int64_t>(c))};
  }
};

Blas::Blas() : impl_(std::make_unique<Impl>()) {
  CUBLAS_CHECK(cublasLtCreate(&impl_->handle));
  CUDA_CHECK(cudaMalloc(&impl_->workspace, kWorkspaceBytes));
}

Blas::~Blas() = default;

size_t Blas::cached_plans() const { return impl_->plans.size(); }

const Plan& Blas::Impl::plan_for(const GemmParams& p) {
  const std::array<uint32_t, 3> align = alignments(p);
  const PlanKey key{p.m, p.n, p.k, p.trans_a, p.trans_b, static_cast<int64_t>(p.ab_type), static_cast<int64_t>(p.c_type),
                    p.beta != 0.0f, p.batch, p.stride_a, p.stride_b, p.stride_c, align[0], align[1], align[2], 0};
  auto it = plans.find(key);
  if (it != plans.end()) return *it->second;

  auto plan = std::make_unique<Plan>();
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  // Column-major view (cuda/blas.h): C^T[n, m] = op_b(B)^T[n, k] . op_a(A)^T[k, m], so cuBLAS's
  // first operand is our B and its second our A; a transposed row-major operand is a
  // non-transposed column-major one and vice versa.
  const cublasOperation_t op_first = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_second = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_first, sizeof(op_first)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_second, sizeof(op_second)));
  const cudaDataType_t ab = data_type(p.ab_type), c = data_type(p.c_type);
  // Stored shapes, column-major: B row-major [k, n] is [n, k] (ld n); B^T stored [n, k] is [k, n] (ld k).
  if (p.trans_b) CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, ab, p.k, p.n, p.k));
  else CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, ab, p.n, p.k, p.n));
  if (p.trans_a) CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, ab, p.m, p.k, p.m));
  else CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, ab, p.k, p.m, p.k));
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->c, c, p.n, p.m, p.n));
  set_batch(plan->a, p.batch, p.stride_b);
  set_batch(plan->b, p.batch, p.stride_a);
  set_batch(plan->c, p.batch, p.stride_c);

  bool found = false;
  CUBLAS_CHECK(best_algo(handle, *plan, align[1], align[0], align[2], &plan->algo, &found));
  if (!found) throw CudaError("cuBLASLt has no algorithm for " + describe(p));
  return *plans.emplace(key, std::move(plan)).first->second;
}

void Blas::gemm(const GemmParams& p) {
  if (p.m < 0 || p.n < 0 || p.k < 0 || p.batch < 1) throw CudaError("Blas::gemm: bad sizes in " + describe(p));
  if (p.m == 0 || p.n == 0 || p.batch == 0) return;
  if (p.k == 0) {  // an empty sum: C = beta * C, which cuBLASLt does not promise for k = 0
    if (p.beta == 1.0f) return;
    if (p.beta != 0.0f) throw CudaError("Blas::gemm: k = 0 with beta other than 0 or 1 in " + describe(p));
    const size_t elem = element_bytes(p.c_type);
    for (int64_t i = 0; i < p.batch; ++i)
      CUDA_CHECK(cudaMemsetAsync(static_cast<char*>(p.c) + static_cast<size_t>(i * p.stride_c) * elem, 0,
                                 static_cast<size_t>(p.m * p.n) * elem, p.stream));
    return;
  }
  const Plan& plan = impl_->plan_for(p);
  CUBLAS_CHECK(cublasLtMatmul(impl_->handle, plan.desc, &p.alpha, p.b, plan.a, p.a, plan.b, &p.beta, p.c, plan.c,
                              p.c, plan.c, &plan.algo, impl_->workspace, kWorkspaceBytes, p.stream));
}


// ---- FP8 with fine-grained scales (cuda/fp8_gemm.h) through cuBLASLt's block scaling --------------
//
// The mapping. cuBLASLt is column-major, so (as in gemm() above) our row-major C[m, n] is its D
// [n, m] (ld n), and D = op(A_lt) op(B_lt) with
//   A_lt = our b: stored row-major [n, k] = column-major [k, n] (ld k), op T -> [n, k]
//   B_lt = our a: stored row-major [m, k] = column-major [k, m] (ld k), op N -> [k, m]
// which is the "TN" form, the only one Hopper's FP8 kernels take; cuBLASLt's M is our n, its N our
// m, K is k. So cuBLASLt's A scales are ours of b (b_tile), its B scales ours of a (a_tile).
//
// What cuBLAS documents for the 128-element 1D / 128x128 2D block scaling (cuBLAS 12.9+, sm_90 only;
// docs.nvidia.com/cuda/cublas/#scaling-factors-layouts, section "128-element 1D and 128x128 2D Block
// Scaling For FP8 Data Types" and its "Scaling factors layouts"):
//   - scale modes VEC128_32F and BLK128x128_32F per operand; not BLK128x128 on both; D bf16, f16 or
//     f32; M and N multiples of 4; scale start addresses 16-byte aligned;
//   - VEC128_32F: "M-major for A with shape M x L" (L = ceil(K / 128); M-major = the M index is
//     contiguous), N-major for B: scale(row, chunk) at [chunk * rows + row];
//   - BLK128x128_32F: "K-major and the stride between consecutive columns must be a multiple of 4":
//     shape L4 x ceil(M / 128) with L4 = L rounded up to 4: scale(block, chunk) at [block * L4 + chunk].
// (The same layouts in NVIDIA's CUDALibrarySamples, cuBLASMp/matmul.h scale_layout_offset, and in
// PyTorch's _scaled_mm checks is_blockwise_1x128_scaling / is_blockwise_128x128_scaling, PR #166752.)
// moelab's layouts (cuda/fp8_gemm.h) are row-major [rows, L] and [ceil(rows / 128), L]: the Row128
// scales are always transposed and the Block128 ones re-padded (when L % 4 != 0) into a buffer this
// Blas owns (fp8_scales_to_cublaslt in cuda/fp8_gemm.cu), a few KB to MB, before each GEMM. Like the
// workspace, that buffer is shared by all calls: GEMMs of one Blas must not run concurrently on
// different streams.
// Further FP8 requirements (cuBLAS "cublasLtMatmul" and "Tensor Core Usage"): A, B, C 16-byte
// aligned, leading dimensions (k, k and n) multiples of 16 bytes, compute type CUBLAS_COMPUTE_32F with
// scale type CUDA_R_32F.

namespace {

constexpr size_t kScaleAlign = 256;  // offset of the second operand's scales in the buffer (>= 16 B)

int64_t fp8_scale_floats(Fp8Tile tile, int64_t rows, int64_t L) {
  return tile == Fp8Tile::Row128 ? rows * L : (rows + kFp8BlockSize - 1) / kFp8BlockSize * ((L + 3) / 4 * 4);
}

size_t round_up(size_t x, size_t to) { return (x + to - 1) / to * to; }

int32_t scale_mode(Fp8Tile tile) {
  return tile == Fp8Tile::Row128 ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F;
}

void set_scale_pointers(cublasLtMatmulDesc_t desc, const float* first, const float* second) {
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &first, sizeof(first)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &second, sizeof(second)));
}

std::string describe(const Fp8GemmParams& p) {
  auto tile = [](Fp8Tile t) { return t == Fp8Tile::Row128 ? "row128" : "block128"; };
  return "gemm_fp8 m=" + std::to_string(p.m) + " n=" + std::to_string(p.n) + " k=" + std::to_string(p.k) +
         " a=" + tile(p.a_tile) + " b=" + tile(p.b_tile) + " c=" + (p.c_bf16 ? "bf16" : "f32") +
         " accumulate=" + std::to_string(p.accumulate);
}

}  // namespace

void* Blas::Impl::fp8_scale_buffer(size_t bytes) {
  if (bytes > fp8_scales_bytes) {
    // A documented synchronisation point: the first GEMM of a larger shape. Earlier GEMMs may still
    // read the old buffer, so the device finishes them before it goes.
    // Through cuda/runtime.h, so that the bench's counters see the allocation and the wait.
    const size_t grown = std::max(round_up(bytes, size_t{1} << 16), 2 * fp8_scales_bytes);
    if (fp8_scales) {
      synchronize();
      free_device(fp8_scales);
      fp8_scales = nullptr;
      fp8_scales_bytes = 0;
    }
    fp8_scales = malloc_device(grown);
    fp8_scales_bytes = grown;
  }
  return fp8_scales;
}

// The plan of an FP8 shape: descriptors and the heuristic's algorithm, or has_algo = false. The
// scale pointers (cuBLASLt's A = ours of b first) are set before the heuristic, which wants them, and
// again before every matmul (the buffer may have moved).
const Plan& Blas::Impl::fp8_plan_for(const Fp8GemmParams& p, const float* scales_first, const float* scales_second) {
  const uint32_t align_a = alignment_of(p.a), align_b = alignment_of(p.b), align_c = alignment_of(p.c);
  // Slot 15 = 1 tells these keys from gemm()'s (slot 15 = 0).
  const PlanKey key{p.m,     p.n,     p.k,     static_cast<int64_t>(p.a_tile), static_cast<int64_t>(p.b_tile),
                    p.c_bf16, p.accumulate, align_a, align_b, align_c, 0, 0, 0, 0, 0, 1};
  auto it = plans.find(key);
  if (it != plans.end()) return *it->second;

  auto plan = std::make_unique<Plan>();
  CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
  const int32_t mode_first = scale_mode(p.b_tile), mode_second = scale_mode(p.a_tile);
  CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode_first, sizeof(mode_first)));
  CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode_second,
                                              sizeof(mode_second)));
  set_scale_pointers(plan->desc, scales_first, scales_second);
  const cudaDataType_t c_type = p.c_bf16 ? CUDA_R_16BF : CUDA_R_32F;
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, CUDA_R_8F_E4M3, p.k, p.n, p.k));  // our b, column-major [k, n]
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, CUDA_R_8F_E4M3, p.k, p.m, p.k));  // our a, column-major [k, m]
  CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->c, c_type, p.n, p.m, p.n));           // our C, column-major [n, m]

  bool found = false;
  cublasStatus_t status = best_algo(handle, *plan, align_b, align_a, align_c, &plan->algo, &found);
  // An unsupported combination comes back as NOT_SUPPORTED (or INVALID_VALUE for a scale layout
  // this cuBLAS does not know): no algorithm, not an error.
  if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) found = false;
  else CUBLAS_CHECK(status);
  plan->has_algo = found;
  return *plans.emplace(key, std::move(plan)).first->second;
}

bool Blas::gemm_fp8(const Fp8GemmParams& p) {
  if (p.m < 0 || p.n < 0 || p.k < 0) throw CudaError("Blas::gemm_fp8: bad sizes in " + describe(p));
  Impl& im = *impl_;
  if (im.fp8_arch < 0) {
    int device = 0, major = 0, minor = 0;
    CUDA_CHECK(cudaGetDevice(&device));
    CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
    im.fp8_arch = 10 * major + minor;
  }
  // Block scaling with f32 scales exists on sm_90 only, from cuBLAS 12.9 on (the library found at
  // run time may be older than the headers).
  if (im.fp8_arch != 90 || cublasLtGetVersion() < 120900) return false;
  if (p.a_tile == Fp8Tile::Block128 && p.b_tile == Fp8Tile::Block128) return false;
  if (p.m == 0 || p.n == 0) return true;
  if (p.k == 0) {  // an empty sum: C unchanged, or 0
    if (!p.accumulate)
      CUDA_CHECK(cudaMemsetAsync(p.c, 0, static_cast<size_t>(p.m * p.n) * (p.c_bf16 ? 2 : 4), p.stream));
    return true;
  }
  const int64_t c_bytes = p.c_bf16 ? 2 : 4;
  if (p.m % 4 != 0 || p.n % 4 != 0 || p.k % 16 != 0 || (p.n * c_bytes) % 16 != 0) return false;
  if (alignment_of(p.a) < 16 || alignment_of(p.b) < 16 || alignment_of(p.c) < 16) return false;
  if (!p.a_scales || !p.b_scales) throw CudaError("Blas::gemm_fp8: null scales in " + describe(p));

  // The converted scales: cuBLASLt's A (ours of b) at 0, its B (ours of a) after it.
  const int64_t L = (p.k + kFp8BlockSize - 1) / kFp8BlockSize;
  const size_t first_bytes = static_cast<size_t>(fp8_scale_floats(p.b_tile, p.n, L)) * sizeof(float);
  const size_t second_bytes = static_cast<size_t>(fp8_scale_floats(p.a_tile, p.m, L)) * sizeof(float);
  const size_t second_offset = round_up(first_bytes, kScaleAlign);
  char* buffer = static_cast<char*>(im.fp8_scale_buffer(second_offset + second_bytes));
  float* scales_first = reinterpret_cast<float*>(buffer);
  float* scales_second = reinterpret_cast<float*>(buffer + second_offset);

  const Plan& plan = im.fp8_plan_for(p, scales_first, scales_second);
  if (!plan.has_algo) return false;
  set_scale_pointers(plan.desc, scales_first, scales_second);
  fp8_scales_to_cublaslt(p.b_scales, scales_first, p.b_tile, p.n, L, p.stream);
  fp8_scales_to_cublaslt(p.a_scales, scales_second, p.a_tile, p.m, L, p.stream);
  const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(im.handle, plan.desc, &alpha, p.b, plan.a, p.a, plan.b, &beta, p.c, plan.c, p.c, plan.c,
                              &plan.algo, im.workspace, kWorkspaceBytes, p.stream));
  return true;
}

}  // namespace moelab::cuda
