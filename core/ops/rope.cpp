// RoPE: argument checks + dispatch, and the CPU reference (the specification).
#include "core/ops/rope.h"

#include <cmath>
#include <vector>

#include "core/ops/op_util.h"
#include "cuda/rope.h"

namespace moelab {

namespace ref {

template <typename T>
void rope_rotate(const T* in, T* out, const RopeShape& s, double theta, int64_t pos_offset, bool inverse) {
  const int64_t pairs = s.rope_dim / 2;
  // cos/sin table [T, R/2], built in double: pos * theta^(-2i/R) in float is off by ~1e-7
  // relative, ~1e-3 rad at position 10^4; in double the cast of cos/sin is the only rounding.
  std::vector<double> inv_freq(pairs);
  for (int64_t i = 0; i < pairs; ++i)
    inv_freq[i] = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(s.rope_dim));
  std::vector<T> cos_t(s.T * pairs), sin_t(s.T * pairs);
  for (int64_t t = 0; t < s.T; ++t) {
    const double pos = static_cast<double>(pos_offset + t);
    for (int64_t i = 0; i < pairs; ++i) {
      const double angle = pos * inv_freq[i];
      cos_t[t * pairs + i] = static_cast<T>(std::cos(angle));
      sin_t[t * pairs + i] = static_cast<T>(inverse ? -std::sin(angle) : std::sin(angle));
    }
  }
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < s.B; ++b) {
    for (int64_t t = 0; t < s.T; ++t) {
      const T* c = cos_t.data() + t * pairs;
      const T* sn = sin_t.data() + t * pairs;
      for (int64_t h = 0; h < s.H; ++h) {
        const int64_t row = ((b * s.T + t) * s.H + h) * s.Dh;
        const T* x = in + row;
        T* y = out + row;
        if (x != y)
          for (int64_t d = 0; d < s.Dh; ++d) y[d] = x[d];  // the dims outside the rotated range
        const T* xr = x + s.rope_offset;
        T* yr = y + s.rope_offset;
        for (int64_t i = 0; i < pairs; ++i) {
          const T x0 = xr[2 * i], x1 = xr[2 * i + 1];  // read both before writing: in may be out
          yr[2 * i] = x0 * c[i] - x1 * sn[i];
          yr[2 * i + 1] = x0 * sn[i] + x1 * c[i];
        }
      }
    }
  }
}

template void rope_rotate<float>(const float*, float*, const RopeShape&, double, int64_t, bool);
template void rope_rotate<double>(const double*, double*, const RopeShape&, double, int64_t, bool);

}  // namespace ref

namespace {
// Checks shared by forward and backward (`in` is x or grad_y, `out` is y or grad_x), then rotates.
void rope_apply(const Exec& ex, const char* op, const char* in_name, const Tensor& in, const char* out_name,
                const Tensor& out, int64_t rope_offset, int64_t rope_dim, double theta, int64_t pos_offset,
                bool inverse) {
  check_ndim(op, in_name, in, 4, 4);
  check_shape(op, out_name, out, in.shape());
  check_dtype(op, out_name, out, in.dtype());
  check_same_device(op, {{in_name, &in}, {out_name, &out}});
  const int64_t head_dim = in.size(3);
  MOELAB_CHECK(rope_dim >= 2 && rope_dim % 2 == 0, op, ": rope_dim is ", rope_dim, ", expected an even number >= 2");
  MOELAB_CHECK(rope_offset >= 0 && rope_offset + rope_dim <= head_dim, op, ": rope_offset ", rope_offset,
               " + rope_dim ", rope_dim, " must lie within the head dim ", head_dim, " of ", in_name, " ", in.str());
  MOELAB_CHECK(theta > 0 && std::isfinite(theta), op, ": theta is ", theta, ", expected a finite value > 0");
  MOELAB_CHECK(pos_offset >= 0, op, ": pos_offset is ", pos_offset, ", expected >= 0");
  // In place is fine (each pair is read before it is written); a partial overlap is not.
  ops_detail::check_in_place_or_disjoint(op, in_name, in, out_name, out);
  const ref::RopeShape s{in.size(0), in.size(1), in.size(2), head_dim, rope_offset, rope_dim};
  if (in.device() == Device::CUDA) {
    ops_detail::check_cuda_f32_or_bf16(op, in_name, in);
    cuda::RopeParams p;
    p.in = in.raw();
    p.out = out.raw();
    p.B = s.B; p.T = s.T; p.H = s.H; p.Dh = s.Dh;
    p.rope_offset = s.rope_offset; p.rope_dim = s.rope_dim;
    p.theta = theta;
    p.pos_offset = pos_offset;
    p.inverse = inverse;
    p.bf16 = in.dtype() == DType::BF16;
    p.stream = ex.stream;
    cuda::rope_rotate(p);
    return;
  }
  ops_detail::dispatch_cpu_float(op, in, [&](auto tag) {
    using T = decltype(tag);
    ref::rope_rotate<T>(in.data<T>(), out.data<T>(), s, theta, pos_offset, inverse);
  });
}
}  // namespace

void rope_forward(const Exec& ex, const Tensor& x, const Tensor& y, int64_t rope_offset, int64_t rope_dim, double theta,
                  int64_t pos_offset) {
  rope_apply(ex, "rope_forward", "x", x, "y", y, rope_offset, rope_dim, theta, pos_offset, /*inverse=*/false);
}

// y = R(a) x with R orthogonal, so grad_x = R(a)^T grad_y = R(-a) grad_y.
void rope_backward(const Exec& ex, const Tensor& grad_y, const Tensor& grad_x, int64_t rope_offset, int64_t rope_dim,
                   double theta, int64_t pos_offset) {
  rope_apply(ex, "rope_backward", "grad_y", grad_y, "grad_x", grad_x, rope_offset, rope_dim, theta, pos_offset,
             /*inverse=*/true);
}

}  // namespace moelab
