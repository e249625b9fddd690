// Every CUDA op of the table below against its CPU reference, one suite for all (the pattern of
// ggml's test-backend-ops): a case names its inputs (random, in f32, holding exactly the values of
// the activation dtype), its outputs and how each is compared, and one function that calls the op
// on whichever device the tensors are. The runner calls it once on the CPU (f32 tensors) and once
// on the GPU (inputs in the activation dtype, outputs inside guard rows), then compares every
// output (tests/README.md's tolerances, or bit for bit where the op only copies) and checks the
// guards. A new op joins with one entry; its own quirks (in-place calls, dtype errors, special
// values) stay in its own file.
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "core/ops/activation.h"
#include "core/ops/elementwise.h"
#include "core/ops/mla_kv.h"
#include "core/ops/swiglu.h"
#include "tests/gpu/gpu_harness.h"

namespace moelab {
namespace {
using testing::Guarded;

struct Input {
  Shape shape;
  double std = 1.0;  // normal(0, std), rounded to the activation dtype
};

enum class Compare {
  Exact,        // a copy: bit for bit in both dtypes
  ExactIfF32,   // the CPU's operations in the CPU's order: exact in f32, one rounding in bf16
  Tolerance,    // tests/README.md's atol / rtol of the activation dtype
};

struct Output {
  std::string name;
  Shape shape;
  Compare compare = Compare::Tolerance;
  int init = -1;  // >= 0: starts as that input (an op that accumulates); else garbage (overwritten)
};

// The op, called with tensors on one device: inputs, then outputs, in the case's order.
using Run = std::function<void(const Exec&, const std::vector<Tensor>& in, const std::vector<Tensor>& out)>;

struct OpCase {
  std::string op;
  DType act;
  std::vector<Input> inputs;
  std::vector<Output> outputs;
  Run run;
};

std::string case_name(const OpCase& c) {
  std::string s = c.op + "_" + dtype_name(c.act);
  for (const Input& in : c.inputs)
    for (int64_t d : in.shape.dims()) s += "_" + std::to_string(d);
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

std::vector<OpCase> all_cases() {
  std::vector<OpCase> cases;
  const std::vector<std::pair<Shape, DType>> shapes = {
      {{1}, DType::F32},    {{3, 7}, DType::F32},  {{2, 33, 65}, DType::F32}, {{4, 100, 257}, DType::F32},
      {{1, 1}, DType::BF16}, {{3, 7}, DType::BF16}, {{4, 100, 257}, DType::BF16}};
  for (const auto& [s, act] : shapes) {
    // gate spans the sigmoid's saturated tails (std 6: |gate| up to ~25).
    cases.push_back({"swiglu_forward", act, {{s, 6.0}, {s}}, {{"out", s}},
                     [](const Exec& ex, const auto& in, const auto& out) { swiglu_forward(ex, in[0], in[1], out[0]); }});
    cases.push_back({"swiglu_backward", act, {{s}, {s, 6.0}, {s}}, {{"grad_gate", s}, {"grad_up", s}},
                     [](const Exec& ex, const auto& in, const auto& out) {
                       swiglu_backward(ex, in[0], in[1], in[2], out[0], out[1]);
                     }});
    cases.push_back({"sigmoid_forward", act, {{s, 8.0}}, {{"y", s}},
                     [](const Exec& ex, const auto& in, const auto& out) { sigmoid_forward(ex, in[0], out[0]); }});
    // The backwards read a saved output; any stored y is a valid one for the comparison.
    cases.push_back({"sigmoid_backward", act, {{s}, {s, 0.5}}, {{"grad_x", s}},
                     [](const Exec& ex, const auto& in, const auto& out) { sigmoid_backward(ex, in[0], in[1], out[0]); }});
    cases.push_back({"softmax_forward", act, {{s, 4.0}}, {{"y", s}},
                     [](const Exec& ex, const auto& in, const auto& out) { softmax_forward(ex, in[0], out[0]); }});
    cases.push_back({"softmax_backward", act, {{s}, {s, 0.5}}, {{"grad_x", s}},
                     [](const Exec& ex, const auto& in, const auto& out) { softmax_backward(ex, in[0], in[1], out[0]); }});
    cases.push_back({"add", act, {{s}, {s}}, {{"out", s}},
                     [](const Exec& ex, const auto& in, const auto& out) { add(ex, in[0], in[1], out[0]); }});
    cases.push_back({"axpy", act, {{s}, {s}}, {{"y", s, Compare::Tolerance, 1}},
                     [](const Exec& ex, const auto& in, const auto& out) { axpy(ex, -0.37, in[0], out[0]); }});
  }
  struct Mla {
    int64_t N, H, Dn, Dr, Dv;
    DType act;
  };
  for (const Mla m : {Mla{1, 1, 1, 2, 1, DType::F32}, Mla{7, 3, 5, 4, 6, DType::F32}, Mla{33, 4, 32, 16, 32, DType::F32},
                      Mla{65, 16, 128, 64, 128, DType::F32}, Mla{7, 3, 5, 4, 6, DType::BF16},
                      Mla{65, 16, 128, 64, 128, DType::BF16}}) {
    const Shape kv{m.N, m.H, m.Dn + m.Dv}, kr{m.N, m.Dr}, k{m.N, m.H, m.Dn + m.Dr}, v{m.N, m.H, m.Dv};
    const int64_t H = m.H, Dn = m.Dn;
    cases.push_back({"mla_kv_forward", m.act, {{kv}, {kr}}, {{"k", k, Compare::Exact}, {"v", v, Compare::Exact}},
                     [H, Dn](const Exec& ex, const auto& in, const auto& out) {
                       mla_kv_forward(ex, in[0], in[1], H, Dn, out[0], out[1]);
                     }});
    // grad_kr sums over the heads: the CPU's additions in its order in f32, rounded once in bf16.
    cases.push_back({"mla_kv_backward", m.act, {{k}, {v}},
                     {{"grad_kv", kv, Compare::Exact}, {"grad_kr", kr, Compare::ExactIfF32}},
                     [H, Dn](const Exec& ex, const auto& in, const auto& out) {
                       mla_kv_backward(ex, in[0], in[1], H, Dn, out[0], out[1]);
                     }});
  }
  return cases;
}

void PrintTo(const OpCase& c, std::ostream* os) { *os << case_name(c); }

// A case's inputs: random f32 holding exactly the values of the activation dtype.
std::vector<Tensor> cpu_inputs(const OpCase& c) {
  std::vector<Tensor> in;
  for (size_t i = 0; i < c.inputs.size(); ++i) {
    Tensor x = testing::randn(c.inputs[i].shape, DType::F32, 1000 + i, c.inputs[i].std);
    in.push_back(c.act == DType::BF16 ? testing::bf16_round(x) : x);  // the CPU sees exactly the GPU's values
  }
  return in;
}

// The CPU reference's outputs (f32) of a case.
std::vector<Tensor> run_cpu(const OpCase& c, const std::vector<Tensor>& in) {
  std::vector<Tensor> out;
  for (const Output& o : c.outputs)
    out.push_back(o.init >= 0 ? in[static_cast<size_t>(o.init)].to(Device::CPU) : Tensor::empty(o.shape, DType::F32));
  c.run(Exec{}, in, out);
  return out;
}

// The table itself needs no GPU: every case's call is well formed on the CPU and writes finite
// outputs, so a GPU session spends its time on the comparisons.
TEST(BackendOpsTable, EveryCaseRunsOnTheCpu) {
  const std::vector<OpCase> cases = all_cases();
  EXPECT_GE(cases.size(), 60u);
  for (const OpCase& c : cases) {
    const std::vector<Tensor> out = run_cpu(c, cpu_inputs(c));
    for (size_t i = 0; i < out.size(); ++i)
      for (int64_t j = 0; j < out[i].numel(); ++j)
        ASSERT_TRUE(std::isfinite(out[i].data<float>()[j])) << case_name(c) << " " << c.outputs[i].name << "[" << j << "]";
  }
}

class BackendOps : public testing::GpuTest, public ::testing::WithParamInterface<OpCase> {};

TEST_P(BackendOps, CudaMatchesCpu) {
  const OpCase& c = GetParam();
  const std::vector<Tensor> cpu_in = cpu_inputs(c);
  const std::vector<Tensor> cpu_out = run_cpu(c, cpu_in);
  std::vector<Tensor> gpu_in, gpu_out;
  for (const Tensor& x : cpu_in) gpu_in.push_back(testing::to_gpu(x, c.act));
  std::vector<Guarded> guarded;
  for (const Output& o : c.outputs) {
    guarded.emplace_back(o.shape, c.act);
    if (o.init >= 0) guarded.back().view.copy_from(gpu_in[static_cast<size_t>(o.init)]);
  }
  for (const Guarded& g : guarded) gpu_out.push_back(g.view);
  c.run(testing::gpu_exec(), gpu_in, gpu_out);

  const double atol = testing::act_atol(c.act), rtol = testing::act_rtol(c.act);
  for (size_t i = 0; i < c.outputs.size(); ++i) {
    const Output& o = c.outputs[i];
    const bool exact = o.compare == Compare::Exact || (o.compare == Compare::ExactIfF32 && c.act == DType::F32);
    EXPECT_TRUE(testing::close(guarded[i].host_f32(), cpu_out[i], exact ? 0.0 : atol, exact ? 0.0 : rtol)) << o.name;
    EXPECT_TRUE(guarded[i].guards_intact()) << "write outside " << o.name;
  }
}

INSTANTIATE_TEST_SUITE_P(Table, BackendOps, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) { return case_name(info.param); });

}  // namespace
}  // namespace moelab
