// cuBLASLt glue (host only, so a .cpp: TOOLCHAIN.md). See cuda/blas.h for the row-major contract.
#include "cuda/blas.h"

#include <cublasLt.h>

#include <array>
#include <map>
#include <stdexcept>
#include <string>

#include "cuda/check.h"

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

  Impl() = default;
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() {  // also after a constructor that threw half-way (Blas owns a complete Impl by then)
    plans.clear();
    if (workspace) cudaFree(workspace);
    if (handle) cublasLtDestroy(handle);
  }
  const Plan& plan_for(const GemmParams& p);
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

  cublasLtMatmulPreference_t pref = nullptr;
  CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kWorkspaceBytes;
  const uint32_t align_first = align[1], align_second = align[0], align_c = align[2];
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  cublasStatus_t status =
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  if (status == CUBLAS_STATUS_SUCCESS)
    status = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_first,
                                                  sizeof(align_first));
  if (status == CUBLAS_STATUS_SUCCESS)
    status = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_second,
                                                  sizeof(align_second));
  if (status == CUBLAS_STATUS_SUCCESS)
    status = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c,
                                                  sizeof(align_c));
  if (status == CUBLAS_STATUS_SUCCESS)
    status = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c,
                                                  sizeof(align_c));
  if (status == CUBLAS_STATUS_SUCCESS)
    status = cublasLtMatmulAlgoGetHeuristic(handle, plan->desc, plan->a, plan->b, plan->c, plan->c, pref, 1, &result,
                                            &found);
  cublasLtMatmulPreferenceDestroy(pref);
  CUBLAS_CHECK(status);
  if (found == 0) throw CudaError("cuBLASLt has no algorithm for " + describe(p));
  plan->algo = result.algo;
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

}  // namespace moelab::cuda
