#include "tests/harness.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "core/nn/config.h"
#include "core/rng.h"

namespace moelab::testing {

namespace {
// Index -> "[i,j,k]" in the tensor's shape, so a failure points at the element.
std::string index_str(const Shape& shape, int64_t flat) {
  std::vector<int64_t> idx(shape.ndim());
  for (int d = shape.ndim() - 1; d >= 0; --d) {
    idx[d] = shape[d] ? flat % shape[d] : 0;
    flat = shape[d] ? flat / shape[d] : 0;
  }
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < idx.size(); ++i) os << (i ? "," : "") << idx[i];
  os << ']';
  return os.str();
}
}  // namespace

::testing::AssertionResult close(const Tensor& actual_in, const Tensor& expected_in, double atol, double rtol) {
  if (actual_in.numel() != expected_in.numel())
    return ::testing::AssertionFailure() << "element counts differ: " << actual_in.str() << " vs " << expected_in.str();
  const Tensor a = actual_in.to(Device::CPU).to(DType::F64), e = expected_in.to(Device::CPU).to(DType::F64);
  const double* pa = a.data<double>();
  const double* pe = e.data<double>();
  double max_abs = 0, max_rel = 0;
  int64_t i_abs = 0, i_rel = 0, n_bad = 0, first_bad = -1;
  for (int64_t i = 0; i < a.numel(); ++i) {
    const double err = std::fabs(pa[i] - pe[i]);
    const double rel = err / std::max(std::fabs(pe[i]), 1e-30);
    const bool bad = !(err <= atol + rtol * std::fabs(pe[i]));  // NaN counts as bad
    if (bad && first_bad < 0) first_bad = i;
    n_bad += bad;
    if (err > max_abs || std::isnan(err)) { max_abs = err; i_abs = i; }
    if (rel > max_rel) { max_rel = rel; i_rel = i; }
  }
  std::ostringstream os;
  os << "max abs err " << max_abs << " at " << index_str(expected_in.shape(), i_abs) << " (actual " << pa[i_abs]
     << ", expected " << pe[i_abs] << "); max rel err " << max_rel << " at " << index_str(expected_in.shape(), i_rel)
     << "; atol " << atol << " rtol " << rtol;
  if (n_bad == 0) return ::testing::AssertionSuccess() << os.str();
  os << "; " << n_bad << " of " << a.numel() << " elements out of tolerance, first at "
     << index_str(expected_in.shape(), first_bad) << " (actual " << pa[first_bad] << ", expected " << pe[first_bad] << ")";
  return ::testing::AssertionFailure() << os.str();
}

Tensor randn(const Shape& shape, DType dtype, uint64_t seed, double std, double mean) {
  Tensor t = Tensor::empty(shape, dtype);
  fill_normal(t, seed, 0, mean, std);
  return t;
}

Tensor rand_uniform(const Shape& shape, DType dtype, uint64_t seed, float lo, float hi) {
  Tensor t = Tensor::empty(shape, dtype);
  fill_uniform(t, seed, 0, lo, hi);
  return t;
}

Tensor i32_tensor(const Shape& shape, const std::vector<int32_t>& values) {
  MOELAB_CHECK(static_cast<int64_t>(values.size()) == shape.numel(), "i32_tensor: ", values.size(),
               " values for shape ", shape.str());
  Tensor t = Tensor::empty(shape, DType::I32);
  std::copy(values.begin(), values.end(), t.data<int32_t>());
  return t;
}

Tensor randint(const Shape& shape, int32_t n, uint64_t seed) {
  Tensor u = rand_uniform(shape, DType::F64, seed, 0.0f, 1.0f);
  Tensor t = Tensor::empty(shape, DType::I32);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data<int32_t>()[i] = std::min<int32_t>(n - 1, static_cast<int32_t>(u.data<double>()[i] * n));
  return t;
}

double dot(const Tensor& a_in, const Tensor& b_in) {
  const Tensor a = a_in.to(Device::CPU).to(DType::F64), b = b_in.to(Device::CPU).to(DType::F64);
  EXPECT_EQ(a.numel(), b.numel()) << "dot of " << a_in.str() << " and " << b_in.str();
  double s = 0;
  for (int64_t i = 0; i < std::min(a.numel(), b.numel()); ++i) s += a.data<double>()[i] * b.data<double>()[i];
  return s;
}

Tensor numeric_grad(const Tensor& x, const std::function<double()>& loss, double step) {
  Tensor g = Tensor::empty(x.shape(), DType::F64);
  double* px = x.data<double>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double saved = px[i];
    px[i] = saved + step;
    const double up = loss();
    px[i] = saved - step;
    const double down = loss();
    px[i] = saved;
    g.data<double>()[i] = (up - down) / (2 * step);
  }
  return g;
}

::testing::AssertionResult check_grad(const Tensor& x, const Tensor& analytic, const std::function<double()>& loss,
                                      double atol, double rtol) {
  if (x.dtype() != DType::F64 || analytic.dtype() != DType::F64)
    return ::testing::AssertionFailure() << "check_grad takes f64 tensors, got x " << x.str() << ", grad " << analytic.str();
  if (x.shape() != analytic.shape())
    return ::testing::AssertionFailure() << "gradient shape " << analytic.str() << " differs from x " << x.str();
  return close(analytic, numeric_grad(x, loss), atol, rtol);
}

void expect_error(const std::function<void()>& fn, const std::string& fragment) {
  try {
    fn();
    ADD_FAILURE() << "expected an error containing \"" << fragment << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

std::string config_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ConfigError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected a ConfigError, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected a ConfigError, nothing was thrown";
  return "";
}

ModelConfig tiny_moe_config() {
  ModelConfig c;
  c.vocab_size = 31;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.max_position_embeddings = 16;
  c.num_attention_heads = 2;
  c.kv_lora_rank = 8;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 4;
  c.v_head_dim = 4;
  c.intermediate_size = 24;
  c.first_k_dense_replace = 1;
  c.moe_intermediate_size = 8;
  c.n_routed_experts = 4;
  c.num_experts_per_tok = 2;
  c.num_nextn_predict_layers = 1;
  c.bias_update_speed = 0.01;
  c.seq_aux_loss_alpha = 0.01;
  c.router_z_loss_coef = 1e-3;
  c.validate();
  return c;
}

}  // namespace moelab::testing
