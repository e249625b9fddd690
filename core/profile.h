// Where a training step's time goes: the phase table of `moelab bench` (ms per step for attention,
// router, permute/combine, expert GEMMs, dense GEMMs, norms/elementwise, loss, optimizer, and the
// time a data-parallel step waits for its gradient reduction: the communication not hidden).
// Layers bracket their work with a PhaseScope on ctx.profiler; a Profiler (train/bench.cpp) turns
// the brackets into a timeline: the time between two consecutive phase changes belongs to the
// phase that was innermost then, so nested phases never double count and the phases sum to the
// step. Everything outside a bracket (norms, residual adds, RoPE, SwiGLU, embedding) is
// NormElementwise. A DenseGemm bracket inside the router or an expert keeps the outer phase (the
// router's gate GEMM is router time, an expert's GEMMs are expert time). Without a profiler
// (ctx.profiler == nullptr, training and tests) a PhaseScope is one branch.
#pragma once

#include <cstdint>
#include <vector>

namespace moelab {

enum class Phase : uint8_t {
  NormElementwise,
  Attention,
  Router,
  PermuteCombine,
  ExpertGemm,
  DenseGemm,
  Loss,
  Optimizer,
  CommWait,
};
constexpr int kNumPhases = 9;
const char* phase_name(Phase p);

class Profiler {
 public:
  virtual ~Profiler() = default;
  void push(Phase p, bool keep_router_or_expert = false);
  void pop();
  Phase current() const { return stack_.empty() ? Phase::NormElementwise : stack_.back(); }

 protected:
  // Called at every change of the innermost phase: `now` runs from this moment on.
  virtual void mark(Phase now) = 0;

 private:
  std::vector<Phase> stack_;
};

class PhaseScope {
 public:
  PhaseScope(Profiler* profiler, Phase phase, bool keep_router_or_expert = false) : profiler_(profiler) {
    if (profiler_) profiler_->push(phase, keep_router_or_expert);
  }
  ~PhaseScope() {
    if (profiler_) profiler_->pop();
  }
  PhaseScope(const PhaseScope&) = delete;
  PhaseScope& operator=(const PhaseScope&) = delete;

 private:
  Profiler* profiler_;
};

}  // namespace moelab
