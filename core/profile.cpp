#include "core/profile.h"

#include "core/check.h"

namespace moelab {

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::NormElementwise: return "norms/elementwise";
    case Phase::Attention: return "attention";
    case Phase::Router: return "router";
    case Phase::PermuteCombine: return "permute/combine";
    case Phase::ExpertGemm: return "expert GEMMs";
    case Phase::DenseGemm: return "dense GEMMs";
    case Phase::Loss: return "loss";
    case Phase::Optimizer: return "optimizer";
    case Phase::CommWait: return "comm (exposed)";
  }
  return "?";
}

void Profiler::push(Phase p, bool keep_router_or_expert) {
  const Phase outer = current();
  if (keep_router_or_expert && (outer == Phase::Router || outer == Phase::ExpertGemm)) p = outer;
  stack_.push_back(p);
  if (p != outer) mark(p);
}

void Profiler::pop() {
  MOELAB_CHECK(!stack_.empty(), "Profiler::pop without a matching push");
  const Phase inner = stack_.back();
  stack_.pop_back();
  if (current() != inner) mark(current());
}

}  // namespace moelab
