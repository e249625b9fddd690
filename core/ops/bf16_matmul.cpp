// bf16 matmul on the CPU: argument checks, the operands' conversion into scratch, and the GEMMs on
// oneDNN's bf16 matmul or on the f32 emulation (see bf16_matmul.h).
#include "core/ops/bf16_matmul.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <dnnl.hpp>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/ops/cpu_gemm.h"
#include "core/ops/op_util.h"

namespace moelab {

namespace ref {

void round_to_bf16(const float* x, float* y, int64_t n) {
  // The bits of core/dtype.h's float_to_bf16_bits, kept in f32, written without branches so the
  // loop vectorises: integer selects only.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = __builtin_bit_cast(uint32_t, x[i]);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;  // nearest, ties to the even half
    const uint32_t nan = (u | 0x00400000u) & 0xffff0000u;                       // a quiet NaN stays one
    y[i] = __builtin_bit_cast(float, (u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
}

void convert_to_bf16(const float* x, bf16_t* y, int64_t n) {
  // round_to_bf16's loop keeping the upper halves: float_to_bf16_bits without its branch.
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = __builtin_bit_cast(uint32_t, x[i]);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;  // nearest, ties to the even half
    const uint32_t nan = (u >> 16) | 0x0040u;                         // a quiet NaN stays one
    y[i].bits = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
  }
}

}  // namespace ref

namespace {

using dnnl::memory;

// The three GEMMs of a Linear layer, w [N, K], on M rows of tokens (bf16 operands, f32 dst):
//   Fprop  y[M, N]   = R(x)[M, K] R(w)[N, K]^T
//   Dgrad  dx[M, K]  = R(dy)[M, N] R(w)[N, K]
//   Wgrad  dw[N, K] += R(dy)[M, N]^T R(x)[M, K]
enum class GemmKind : uint8_t { Fprop, Dgrad, Wgrad };

// A primitive's key: the row count M is not in it. oneDNN compiles a primitive for its exact
// shape, and the MoE experts see a new M at nearly every call: with M in the key the
// shakespeare_moe bench (22 steps) created 2,247 primitives and spent 0.5 s compiling them, which
// made its expert GEMMs twice as slow as the f32 ones. So M is a runtime dimension
// (DNNL_RUNTIME_DIM_VAL): a model needs three primitives per weight shape, created in microseconds,
// and oneDNN runs its gemm kernels (gemm:jit, VDPBF16PS) instead of the brgemm ones it picks for a
// fixed M. Both ran the project's shapes at 150-220 GFLOP/s on one core, against 90-115 for the f32
// GEMM, and the whole step measured the same either way (examples/BENCHMARKS.md).
// `threads` is omp_get_max_threads() at the call: oneDNN plans its work split for the thread count
// it sees, so a primitive belongs to one count.
struct GemmKey {
  GemmKind kind;
  int64_t n, k;
  int threads;
  bool operator==(const GemmKey& o) const { return kind == o.kind && n == o.n && k == o.k && threads == o.threads; }
};

struct GemmKeyHash {
  size_t operator()(const GemmKey& g) const {
    size_t h = 0;
    for (const uint64_t v : {uint64_t(g.kind), uint64_t(g.n), uint64_t(g.k), uint64_t(g.threads)})
      h ^= std::hash<uint64_t>{}(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);  // boost's hash_combine
    return h;
  }
};

// The memory descriptors of one GEMM: src (A), weights (B) and dst of oneDNN's dst = A B, with M
// rows (DNNL_RUNTIME_DIM_VAL for a primitive that takes any M). The operands are row-major;
// a transposed one is read through its strides (oneDNN's kernels take both; nothing is copied).
struct GemmDescs {
  memory::desc a, b, dst;
};
GemmDescs gemm_descs(GemmKind kind, int64_t n, int64_t k, int64_t m) {
  using dt = memory::data_type;
  switch (kind) {
    case GemmKind::Fprop:  // [M, K] x ([N, K] read as [K, N]) -> [M, N]
      return {memory::desc({m, k}, dt::bf16, {k, 1}), memory::desc({k, n}, dt::bf16, {1, k}),
              memory::desc({m, n}, dt::f32, {n, 1})};
    case GemmKind::Dgrad:  // [M, N] x [N, K] -> [M, K]
      return {memory::desc({m, n}, dt::bf16, {n, 1}), memory::desc({n, k}, dt::bf16, {k, 1}),
              memory::desc({m, k}, dt::f32, {k, 1})};
    case GemmKind::Wgrad:  // ([M, N] read as [N, M]) x [M, K] -> [N, K]
      return {memory::desc({n, m}, dt::bf16, {1, n}), memory::desc({m, k}, dt::bf16, {k, 1}),
              memory::desc({n, k}, dt::f32, {k, 1})};
  }
  MOELAB_FAIL("bf16 matmul: unknown GEMM kind ", static_cast<int>(kind));
}

const char* kind_name(GemmKind kind) {
  switch (kind) {
    case GemmKind::Fprop: return "Fprop";
    case GemmKind::Dgrad: return "Dgrad";
    case GemmKind::Wgrad: return "Wgrad";
  }
  return "?";
}

const char* isa_name(dnnl::cpu_isa isa) {
  switch (isa) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "another";
  }
}

// A primitive ready to run.
struct OneDnnGemm {
  GemmKey key;
  dnnl::matmul primitive;
  memory::desc scratchpad;
  size_t scratchpad_bytes = 0;
};

// oneDNN's bf16 matmul for this process: the CPU engine, whether the CPU has bf16 dot products,
// and the primitives created so far, one per GemmKey.
//
// One instance per process, a function-local static: a CPU op takes an Exec, and a default Exec{}
// (no context object at all) is all a CPU op needs, so there is no object to hold the cache in
// without threading a CPU context through every caller. What it holds is the process's anyway:
// the CPU and its ISA, one engine (oneDNN's CPU engine has no state of its own), and primitives,
// which are immutable once created, depend only on their key and give the same results whoever
// created them. The map is guarded by a mutex because ops may run on several threads of an outer
// parallel region at once. It stays small: a few keys per weight shape of the model (GemmKey).
class OneDnnBf16 {
 public:
  static OneDnnBf16& instance() {
    static OneDnnBf16 lib;  // thread-safe initialisation; a constructor that throws is retried next time
    return lib;
  }

  bool available() const { return available_; }
  bool emulation_forced() const { return emulation_forced_; }
  const std::string& path() const { return path_; }

  // The primitive for key, created on first use; null when oneDNN has no fast kernel for it (only
  // its reference loops, or nothing).
  std::shared_ptr<const OneDnnGemm> gemm(const GemmKey& key) {
    const std::lock_guard<std::mutex> lock(mutex_);
    const auto it = cache_.find(key);
    if (it != cache_.end()) return it->second;
    return cache_.emplace(key, create(key)).first->second;
  }

  // dst (+)= A B for g's GEMM on m rows; scratchpad holds g.scratchpad_bytes.
  void run(const OneDnnGemm& g, int64_t m, const bf16_t* a, const bf16_t* b, float* dst, void* scratchpad) const {
    try {
      const GemmDescs d = gemm_descs(g.key.kind, g.key.n, g.key.k, m);
      dnnl::stream stream(engine_);  // a CPU stream runs the primitive on the calling thread, synchronously
      std::unordered_map<int, memory> args{{DNNL_ARG_SRC, memory(d.a, engine_, const_cast<bf16_t*>(a))},
                                           {DNNL_ARG_WEIGHTS, memory(d.b, engine_, const_cast<bf16_t*>(b))},
                                           {DNNL_ARG_DST, memory(d.dst, engine_, dst)}};
      if (g.scratchpad_bytes) args.emplace(DNNL_ARG_SCRATCHPAD, memory(g.scratchpad, engine_, scratchpad));
      g.primitive.execute(stream, args);
      stream.wait();
    } catch (const dnnl::error& e) {
      MOELAB_FAIL("bf16 matmul: oneDNN's ", kind_name(g.key.kind), " matmul failed on M ", m, " N ", g.key.n, " K ",
                  g.key.k, " (", e.what(), ", status ", static_cast<int>(e.status), ")");
    }
  }

 private:
  OneDnnBf16() {
    const char* env = std::getenv("MOELAB_BF16_EMULATE");
    const std::string emulate = env ? env : "";
    MOELAB_CHECK(emulate.empty() || emulate == "0" || emulate == "1", "MOELAB_BF16_EMULATE is '", emulate,
                 "', expected 1 (the CPU's bf16 GEMMs on the f32 emulation) or 0 (oneDNN's bf16 matmul where the CPU "
                 "has one)");
    emulation_forced_ = emulate == "1";
    std::string why;
    try {
      // The ISA oneDNN will use (DNNL_MAX_CPU_ISA may lower it). Without bf16 dot products its
      // bf16 matmul emulates them, and nothing says it would beat the f32 GEMM of the emulation.
      const dnnl::cpu_isa isa = dnnl::get_effective_cpu_isa();
      const auto bf16 = static_cast<unsigned>(dnnl::cpu_isa::avx512_core_bf16);
      if ((static_cast<unsigned>(isa) & bf16) != bf16) {
        why = std::string("oneDNN's ISA here is ") + isa_name(isa) + ", without bf16 dot products";
      } else {
        engine_ = dnnl::engine(dnnl::engine::kind::cpu, 0);
        // One Fprop tells whether a fast kernel exists at all and names it.
        std::string impl;
        if (create({GemmKind::Fprop, 64, 64, omp_get_max_threads()}, &impl)) {
          available_ = true;
          path_ = "oneDNN bf16 matmul (" + impl + ")";
        } else {
          why = "oneDNN has no fast bf16 matmul here (" + (impl.empty() ? std::string("none") : impl) + ")";
        }
      }
    } catch (const dnnl::error& e) {
      why = std::string("oneDNN failed: ") + e.what();
    }
    if (!available_) path_ = "emulated (f32 GEMM of bf16-rounded operands: " + why + ")";
    else if (emulation_forced_) path_ = "emulated (f32 GEMM of bf16-rounded operands: MOELAB_BF16_EMULATE=1)";
  }

  // The primitive for key, or null; impl gets the name of the implementation oneDNN picked.
  std::shared_ptr<const OneDnnGemm> create(const GemmKey& key, std::string* impl = nullptr) const {
    try {
      const GemmDescs d = gemm_descs(key.kind, key.n, key.k, DNNL_RUNTIME_DIM_VAL);
      dnnl::primitive_attr attr;
      // The scratchpad comes from the op's scratch (the arena), not from oneDNN's own allocations.
      attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
      if (key.kind == GemmKind::Wgrad) {
        // dw = dw + A B in the kernel's output stage: up to 18% faster than an f32 temporary
        // added afterwards (examples/BENCHMARKS.md).
        dnnl::post_ops sum;
        sum.append_sum(1.0f);
        attr.set_post_ops(sum);
      }
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(d.a, d.b, d.dst), attr, engine_,
                                            /*allow_empty=*/true);
      if (!pd) return nullptr;
      const std::string name = pd.impl_info_str();
      if (impl) *impl = name;
      if (name.rfind("ref", 0) == 0) return nullptr;  // a reference loop: far slower than the emulation
      OneDnnGemm g;
      g.key = key;
      g.scratchpad = pd.scratchpad_desc();
      g.scratchpad_bytes = g.scratchpad.get_size();
      g.primitive = dnnl::matmul(pd);
      return std::make_shared<const OneDnnGemm>(std::move(g));
    } catch (const dnnl::error& e) {
      MOELAB_FAIL("bf16 matmul: oneDNN could not create the ", kind_name(key.kind), " matmul for N ", key.n, " K ",
                  key.k, " (", e.what(), ", status ", static_cast<int>(e.status), ")");
    }
  }

  dnnl::engine engine_;
  bool available_ = false, emulation_forced_ = false;
  std::string path_;
  std::mutex mutex_;
  std::unordered_map<GemmKey, std::shared_ptr<const OneDnnGemm>, GemmKeyHash> cache_;
};

// The primitives of one call's GEMMs (kinds) on oneDNN, or none for the emulation. One path per
// call, so that the operands are converted once for all its GEMMs: Auto takes oneDNN when it has a
// fast kernel for every one of them; OneDnn throws where it has not. Shapes with nothing to
// multiply (a zero dimension) take the emulation, whose GEMM handles them.
std::vector<std::shared_ptr<const OneDnnGemm>> onednn_gemms(const char* op, Bf16Gemm gemm,
                                                            const ops_detail::MatmulDims& d,
                                                            std::initializer_list<GemmKind> kinds) {
  if (gemm == Bf16Gemm::Emulation || d.m == 0 || d.n == 0 || d.k == 0) return {};
  OneDnnBf16& lib = OneDnnBf16::instance();
  if (gemm == Bf16Gemm::Auto && (lib.emulation_forced() || !lib.available())) return {};
  MOELAB_CHECK(lib.available(), op, ": oneDNN's bf16 matmul was asked for, but ", lib.path());
  // oneDNN sizes its work split by omp_get_max_threads(), also inside a parallel region where its
  // own region gets one thread; a call from a thread of ours must plan for one thread (as
  // cpu_gemm.cpp does). The setting belongs to this thread's task in our region and ends with it.
  if (omp_in_parallel() && omp_get_max_threads() > 1) omp_set_num_threads(1);
  std::vector<std::shared_ptr<const OneDnnGemm>> gemms;
  for (const GemmKind kind : kinds) {
    std::shared_ptr<const OneDnnGemm> g = lib.gemm({kind, d.n, d.k, omp_get_max_threads()});
    if (!g && gemm == Bf16Gemm::Auto) return {};
    MOELAB_CHECK(g, op, ": oneDNN has no fast bf16 ", kind_name(kind), " matmul for N ", d.n, " K ", d.k);
    gemms.push_back(std::move(g));
  }
  return gemms;
}

// A tensor of `shape` from the scratch when there is one, else from the heap.
Tensor take(ScratchScope* scratch, const Shape& shape, DType dtype) {
  return scratch ? scratch->take(shape, dtype) : Tensor::empty(shape, dtype);
}

// x in bf16 storage, in a new tensor.
Tensor to_bf16(ScratchScope* scratch, const Tensor& x) {
  const Tensor y = take(scratch, x.shape(), DType::BF16);
  ref::convert_to_bf16(x.data<float>(), y.data<bf16_t>(), x.numel());
  return y;
}

// x rounded to bf16 in a new f32 tensor (the emulation's operands).
Tensor rounded(ScratchScope* scratch, const Tensor& x) {
  const Tensor y = take(scratch, x.shape(), DType::F32);
  ref::round_to_bf16(x.data<float>(), y.data<float>(), x.numel());
  return y;
}

// dst (+)= A B on oneDNN for m rows, the scratchpad from the scratch.
void run(ScratchScope* scratch, const OneDnnGemm& g, int64_t m, const Tensor& a, const Tensor& b, const Tensor& dst) {
  std::optional<Tensor> pad;  // whole bf16 elements: the scratch hands out typed tensors
  if (g.scratchpad_bytes) pad = take(scratch, {static_cast<int64_t>((g.scratchpad_bytes + 1) / 2)}, DType::BF16);
  OneDnnBf16::instance().run(g, m, a.data<bf16_t>(), b.data<bf16_t>(), dst.data<float>(),
                             pad ? pad->data<bf16_t>() : nullptr);
}

void check_cpu_f32(const char* op, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
  for (const auto& [name, t] : tensors) {
    if (!t->defined()) continue;
    MOELAB_CHECK(t->device() == Device::CPU, op, ": ", name, " is ", t->str(), " on CUDA; bf16 GEMM operands are the "
                 "CPU's bf16 mode (on CUDA bf16 is the activations' dtype: matmul)");
    check_dtype(op, name, *t, DType::F32);
  }
}

}  // namespace

bool bf16_matmul_onednn_available() { return OneDnnBf16::instance().available(); }

std::string bf16_matmul_path() { return OneDnnBf16::instance().path(); }

void bf16_matmul_forward(const Exec& ex, const Tensor& x, const Tensor& w, const Tensor& y, Bf16Gemm gemm) {
  const char* op = "bf16_matmul_forward";
  const ops_detail::MatmulDims d = ops_detail::check_matmul_shapes(op, x, w);
  check_shape(op, "y", y, ops_detail::matmul_output_shape(x, d.n));
  check_cpu_f32(op, {{"x", &x}, {"w", &w}, {"y", &y}});
  std::optional<ScratchScope> scratch;
  if (ex.scratch) scratch.emplace(ex, op);
  ScratchScope* s = scratch ? &*scratch : nullptr;
  // y[M, N] = R(x)[M, K] R(w)[N, K]^T
  const auto onednn = onednn_gemms(op, gemm, d, {GemmKind::Fprop});
  if (!onednn.empty()) return run(s, *onednn[0], d.m, to_bf16(s, x), to_bf16(s, w), y);
  const Tensor rx = rounded(s, x), rw = rounded(s, w);
  ref::gemm<float>(false, true, d.m, d.n, d.k, 1.0f, rx.data<float>(), d.k, rw.data<float>(), d.k, 0.0f,
                   y.data<float>(), d.n);
}

void bf16_matmul_backward(const Exec& ex, const Tensor& grad_y, const Tensor& x, const Tensor& w, const Tensor& grad_x,
                          const Tensor& grad_w, Bf16Gemm gemm) {
  const char* op = "bf16_matmul_backward";
  const ops_detail::MatmulDims d = ops_detail::check_matmul_shapes(op, x, w);
  check_shape(op, "grad_y", grad_y, ops_detail::matmul_output_shape(x, d.n));
  if (grad_x.defined()) check_shape(op, "grad_x", grad_x, x.shape());
  check_shape(op, "grad_w", grad_w, w.shape());
  check_cpu_f32(op, {{"grad_y", &grad_y}, {"x", &x}, {"w", &w}, {"grad_x", &grad_x}, {"grad_w", &grad_w}});
  std::optional<ScratchScope> scratch;
  if (ex.scratch) scratch.emplace(ex, op);
  ScratchScope* s = scratch ? &*scratch : nullptr;
  // grad_x[M, K] = R(dy)[M, N] R(w)[N, K];  grad_w[N, K] += R(dy)[M, N]^T R(x)[M, K]
  const auto onednn = grad_x.defined() ? onednn_gemms(op, gemm, d, {GemmKind::Dgrad, GemmKind::Wgrad})
                                        : onednn_gemms(op, gemm, d, {GemmKind::Wgrad});
  if (!onednn.empty()) {
    const Tensor bdy = to_bf16(s, grad_y);
    if (grad_x.defined()) run(s, *onednn[0], d.m, bdy, to_bf16(s, w), grad_x);
    run(s, *onednn.back(), d.m, bdy, to_bf16(s, x), grad_w);
    return;
  }
  const Tensor rdy = rounded(s, grad_y);
  if (grad_x.defined()) {
    const Tensor rw = rounded(s, w);
    ref::gemm<float>(false, false, d.m, d.k, d.n, 1.0f, rdy.data<float>(), d.n, rw.data<float>(), d.k, 0.0f,
                     grad_x.data<float>(), d.k);
  }
  const Tensor rx = rounded(s, x);
  ref::gemm<float>(true, false, d.n, d.k, d.m, 1.0f, rdy.data<float>(), d.n, rx.data<float>(), d.k, 1.0f,
                   grad_w.data<float>(), d.k);
}

}  // namespace moelab
