// The CUDA backend of a build without the CUDA toolkit (MOELAB_CUDA=OFF, or no nvcc found): every
// launcher of cuda/*.h exists and throws one clear error, so core/'s ops call cuda::x(params) with no
// #if and a CUDA build and a CPU-only build differ in this one file. Nothing reaches these on a CPU
// tensor: no CUDA tensor can be allocated here (device_count() is 0, malloc_device() throws).
// A launcher added to cuda/ without its line here fails to link in the CPU-only build.
#include <stdexcept>
#include <string>

#include "cuda/activation.h"
#include "cuda/adamw.h"
#include "cuda/attention.h"
#include "cuda/attention_decode.h"
#include "cuda/blas.h"
#include "cuda/columns.h"
#include "cuda/cross_entropy.h"
#include "cuda/elementwise.h"
#include "cuda/embedding.h"
#include "cuda/fp8_gemm.h"
#include "cuda/fp8_quant.h"
#include "cuda/grad_norm.h"
#include "cuda/mla_decode.h"
#include "cuda/mla_kv.h"
#include "cuda/moe_balance.h"
#include "cuda/moe_bias.h"
#include "cuda/moe_dispatch.h"
#include "cuda/moe_route.h"
#include "cuda/rmsnorm.h"
#include "cuda/rng.h"
#include "cuda/rope.h"
#include "cuda/runtime.h"
#include "cuda/step_stats.h"
#include "cuda/swiglu.h"
#include "cuda/topk.h"

namespace moelab::cuda {

namespace {
[[noreturn]] void no_cuda(const char* what) {
  throw std::runtime_error(std::string("cuda::") + what +
                           ": this moelab was built without CUDA (configure with -DMOELAB_CUDA=ON on a machine "
                           "with the CUDA toolkit)");
}
}  // namespace

// Device discovery and memory: no device; releasing nothing is not an error.
int device_count() { return 0; }
std::string device_description(int) { no_cuda("device_description"); }
void* malloc_device(size_t) { no_cuda("malloc_device"); }
void free_device(void*) {}
void* malloc_pinned(size_t) { no_cuda("malloc_pinned"); }
void free_pinned(void*) {}
void memcpy_h2d(void*, const void*, size_t) { no_cuda("memcpy_h2d"); }
void memcpy_d2h(void*, const void*, size_t) { no_cuda("memcpy_d2h"); }
void memcpy_d2d(void*, const void*, size_t) { no_cuda("memcpy_d2d"); }
void memset_device(void*, int, size_t) { no_cuda("memset_device"); }
void set_device(int) { no_cuda("set_device"); }
void synchronize() { no_cuda("synchronize"); }
size_t free_memory() { no_cuda("free_memory"); }
size_t total_memory() { no_cuda("total_memory"); }
void* event_create() { no_cuda("event_create"); }
void event_destroy(void*) {}
void event_record(void*) { no_cuda("event_record"); }
float event_elapsed_ms(void*, void*) { no_cuda("event_elapsed_ms"); }
Counters counters() { return Counters{}; }
void count_host_sync() {}

// cuBLASLt: never constructed.
struct Blas::Impl {};
Blas::Blas() { no_cuda("Blas"); }
Blas::~Blas() = default;
void Blas::gemm(const GemmParams&) { no_cuda("Blas::gemm"); }
bool Blas::gemm_fp8(const Fp8GemmParams&) { no_cuda("Blas::gemm_fp8"); }
size_t Blas::cached_plans() const { return 0; }

// The kernels' launchers.
void sigmoid_forward(const SigmoidForwardParams&) { no_cuda("sigmoid_forward"); }
void sigmoid_backward(const SigmoidBackwardParams&) { no_cuda("sigmoid_backward"); }
void softmax_forward(const SoftmaxForwardParams&) { no_cuda("softmax_forward"); }
void softmax_backward(const SoftmaxBackwardParams&) { no_cuda("softmax_backward"); }
void adamw_step(const AdamwParams&) { no_cuda("adamw_step"); }
void attention_forward(const AttentionForwardParams&) { no_cuda("attention_forward"); }
void attention_backward(const AttentionBackwardParams&) { no_cuda("attention_backward"); }
void attention_decode_forward(const AttentionDecodeParams&) { no_cuda("attention_decode_forward"); }
void copy_columns(const CopyColumnsParams&) { no_cuda("copy_columns"); }
void cross_entropy_forward(const CrossEntropyForwardParams&) { no_cuda("cross_entropy_forward"); }
void cross_entropy_backward(const CrossEntropyBackwardParams&) { no_cuda("cross_entropy_backward"); }
void add(const AddParams&) { no_cuda("add"); }
void axpy(const AxpyParams&) { no_cuda("axpy"); }
void cast(const CastParams&) { no_cuda("cast"); }
size_t embedding_backward_workspace_bytes(int64_t) { no_cuda("embedding_backward_workspace_bytes"); }
void embedding_forward(const EmbeddingForwardParams&) { no_cuda("embedding_forward"); }
void embedding_backward(const EmbeddingBackwardParams&) { no_cuda("embedding_backward"); }
void fp8_quantize(const Fp8QuantizeParams&) { no_cuda("fp8_quantize"); }
void fp8_dequantize(const Fp8DequantizeParams&) { no_cuda("fp8_dequantize"); }
void fp8_gemm_reference(const Fp8GemmParams&) { no_cuda("fp8_gemm_reference"); }
int64_t fp8_scales_to_cublaslt(const float*, float*, Fp8Tile, int64_t, int64_t, Stream) {
  no_cuda("fp8_scales_to_cublaslt");
}
void grad_sum_squares(const GradSumSquaresParams&) { no_cuda("grad_sum_squares"); }
void grad_scale(const GradScaleParams&) { no_cuda("grad_scale"); }
void mla_decode_attention(const MlaDecodeParams&) { no_cuda("mla_decode_attention"); }
void mla_kv_forward(const MlaKvForwardParams&) { no_cuda("mla_kv_forward"); }
void mla_kv_backward(const MlaKvBackwardParams&) { no_cuda("mla_kv_backward"); }
void moe_aux_loss_forward(const MoeAuxLossParams&) { no_cuda("moe_aux_loss_forward"); }
void moe_aux_loss_backward(const MoeAuxLossParams&) { no_cuda("moe_aux_loss_backward"); }
void moe_z_loss_forward(const MoeZLossParams&) { no_cuda("moe_z_loss_forward"); }
void moe_z_loss_backward(const MoeZLossParams&) { no_cuda("moe_z_loss_backward"); }
void moe_bias_update(const MoeBiasUpdateParams&) { no_cuda("moe_bias_update"); }
void moe_dispatch_layout(const MoeDispatchLayoutParams&) { no_cuda("moe_dispatch_layout"); }
void moe_dispatch_forward(const MoeDispatchForwardParams&) { no_cuda("moe_dispatch_forward"); }
void moe_dispatch_backward(const MoeDispatchBackwardParams&) { no_cuda("moe_dispatch_backward"); }
void moe_combine_forward(const MoeCombineForwardParams&) { no_cuda("moe_combine_forward"); }
void moe_combine_backward(const MoeCombineBackwardParams&) { no_cuda("moe_combine_backward"); }
void moe_route_topk(const MoeRouteTopkParams&) { no_cuda("moe_route_topk"); }
void moe_gate_forward(const MoeGateForwardParams&) { no_cuda("moe_gate_forward"); }
void moe_gate_backward(const MoeGateBackwardParams&) { no_cuda("moe_gate_backward"); }
void moe_capacity_drop(const MoeCapacityDropParams&) { no_cuda("moe_capacity_drop"); }
void rmsnorm_forward(const RmsnormForwardParams&) { no_cuda("rmsnorm_forward"); }
void rmsnorm_backward(const RmsnormBackwardParams&) { no_cuda("rmsnorm_backward"); }
void fill_random_f32(const FillRandomParams&) { no_cuda("fill_random_f32"); }
void rope_rotate(const RopeParams&) { no_cuda("rope_rotate"); }
void step_stats_reset(const StepStatsResetParams&) { no_cuda("step_stats_reset"); }
void step_stats_accumulate(const StepStatsAccumulateParams&) { no_cuda("step_stats_accumulate"); }
void swiglu_forward(const SwigluForwardParams&) { no_cuda("swiglu_forward"); }
void swiglu_backward(const SwigluBackwardParams&) { no_cuda("swiglu_backward"); }
void topk_forward(const TopkForwardParams&) { no_cuda("topk_forward"); }
void topk_backward(const TopkBackwardParams&) { no_cuda("topk_backward"); }

}  // namespace moelab::cuda
