// moelab_fp8_quant_tool: runs moelab's FP8 code on raw data for tests/ops/check_fp8_ml_dtypes.py,
// which compares it with ml_dtypes' float8_e4m3fn / float8_e5m2 (an independent implementation).
//
//   moelab_fp8_quant_tool codes OUT_E4M3 OUT_E5M2
//       The f32 decoding (core/dtype.h) of all 256 codes of each format: 256 f32 per file, code order.
//   moelab_fp8_quant_tool convert N X_FILE OUT_E4M3 OUT_E5M2
//       The e4m3 and the e5m2 byte (core/dtype.h's float_to_fp8_*_bits) of each of N f32 values.
//   moelab_fp8_quant_tool quantize R C X_FILE Q_FILE SCALES_FILE Y_FILE [--tile row128|block128]
//                                  [--transpose 0|1] [--pow2 0|1]
//       The CPU fp8_quantize of x [R, C] (core/ops/fp8_quant.h; defaults Row128, no transpose,
//       amax / 448 scales), then fp8_dequantize. Writes q (e4m3 bytes, [R, C], or [C, R] when
//       transposed), its scales (f32, fp8_scales_shape of q's shape) and y (f32, in q's layout).
//   moelab_fp8_quant_tool N D X_FILE Q_FILE SCALES_FILE Y_FILE
//       The original form: quantize with the defaults.
// Every file is raw little-endian (row-major). Exit status 0; 1 with the error on stderr (a file
// that cannot be read or written or has the wrong size, an op's error); 2 on bad usage.
#include <cctype>
#include <cstdio>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/ops/fp8_quant.h"

namespace {

constexpr const char* kUsage =
    "usage: moelab_fp8_quant_tool codes OUT_E4M3 OUT_E5M2\n"
    "       moelab_fp8_quant_tool convert N X_FILE OUT_E4M3 OUT_E5M2\n"
    "       moelab_fp8_quant_tool quantize R C X_FILE Q_FILE SCALES_FILE Y_FILE [--tile row128|block128]\n"
    "                                      [--transpose 0|1] [--pow2 0|1]\n"
    "       moelab_fp8_quant_tool N D X_FILE Q_FILE SCALES_FILE Y_FILE   (quantize with the defaults)\n";

// Bad usage: the message and the usage on stderr, exit status 2.
struct UsageError {
  std::string what;
};

// A non-negative decimal count, or a usage error naming the argument.
int64_t parse_count(const char* name, const std::string& s) {
  if (s.empty() || s.size() > 15)
    throw UsageError{std::string(name) + " must be a non-negative integer, got '" + s + "'"};
  for (char ch : s)
    if (!std::isdigit(static_cast<unsigned char>(ch)))
      throw UsageError{std::string(name) + " must be a non-negative integer, got '" + s + "'"};
  return std::stoll(s);
}

bool parse_flag(const char* name, const std::string& s) {
  if (s == "0") return false;
  if (s == "1") return true;
  throw UsageError{std::string(name) + " must be 0 or 1, got '" + s + "'"};
}

bool is_count(const char* s) {
  if (*s == '\0') return false;
  for (; *s; ++s)
    if (!std::isdigit(static_cast<unsigned char>(*s))) return false;
  return true;
}

void read_raw(const std::string& path, void* data, size_t nbytes, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  MOELAB_CHECK(in, "cannot open ", path);
  in.read(static_cast<char*>(data), static_cast<std::streamsize>(nbytes));
  MOELAB_CHECK(in.gcount() == static_cast<std::streamsize>(nbytes) && in.peek() == EOF, path, " does not hold ",
               nbytes, " bytes (", what, ")");
}

void write_raw(const std::string& path, const void* data, size_t nbytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  MOELAB_CHECK(out, "cannot open ", path, " for writing");
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
  out.close();
  MOELAB_CHECK(out, "cannot write ", path);
}

void write_tensor(const std::string& path, const moelab::Tensor& t) { write_raw(path, t.raw(), t.nbytes()); }

int run_codes(const std::vector<std::string>& a) {
  if (a.size() != 2) throw UsageError{"codes takes OUT_E4M3 OUT_E5M2"};
  std::vector<float> e4m3(256), e5m2(256);
  for (int b = 0; b < 256; ++b) {
    e4m3[b] = moelab::fp8_e4m3_bits_to_float(static_cast<uint8_t>(b));
    e5m2[b] = moelab::fp8_e5m2_bits_to_float(static_cast<uint8_t>(b));
  }
  write_raw(a[0], e4m3.data(), e4m3.size() * sizeof(float));
  write_raw(a[1], e5m2.data(), e5m2.size() * sizeof(float));
  return 0;
}

int run_convert(const std::vector<std::string>& a) {
  if (a.size() != 4) throw UsageError{"convert takes N X_FILE OUT_E4M3 OUT_E5M2"};
  const int64_t n = parse_count("N", a[0]);
  std::vector<float> x(static_cast<size_t>(n));
  read_raw(a[1], x.data(), x.size() * sizeof(float), std::to_string(n) + " f32");
  std::vector<uint8_t> e4m3(x.size()), e5m2(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    e4m3[i] = moelab::float_to_fp8_e4m3_bits(x[i]);
    e5m2[i] = moelab::float_to_fp8_e5m2_bits(x[i]);
  }
  write_raw(a[2], e4m3.data(), e4m3.size());
  write_raw(a[3], e5m2.data(), e5m2.size());
  return 0;
}

int run_quantize(const std::vector<std::string>& a) {
  using namespace moelab;
  if (a.size() < 6 || a.size() % 2 != 0)
    throw UsageError{"quantize takes R C X_FILE Q_FILE SCALES_FILE Y_FILE and options given as pairs"};
  const int64_t R = parse_count("R", a[0]), C = parse_count("C", a[1]);
  MOELAB_CHECK(C == 0 || R <= (int64_t{1} << 40) / C, "R * C = ", R, " * ", C, " is too large");
  Fp8Quant how;
  for (size_t i = 6; i < a.size(); i += 2) {
    const std::string& opt = a[i];
    const std::string& val = a[i + 1];
    if (opt == "--tile") {
      if (val == "row128") how.tile = Fp8Tile::Row128;
      else if (val == "block128") how.tile = Fp8Tile::Block128;
      else throw UsageError{"--tile must be row128 or block128, got '" + val + "'"};
    } else if (opt == "--transpose") {
      how.transpose = parse_flag("--transpose", val);
    } else if (opt == "--pow2") {
      how.pow2_scales = parse_flag("--pow2", val);
    } else {
      throw UsageError{"unknown option '" + opt + "'"};
    }
  }
  const int64_t r = how.transpose ? C : R, c = how.transpose ? R : C;  // q's shape
  const Tensor x = Tensor::empty({R, C}, DType::F32), q = Tensor::empty({r, c}, DType::FP8_E4M3);
  const Tensor scales = Tensor::empty(fp8_scales_shape(r, c, how.tile), DType::F32);
  const Tensor y = Tensor::empty({r, c}, DType::F32);
  read_raw(a[2], x.raw(), x.nbytes(), x.str());
  fp8_quantize(Exec{}, x, q, scales, how);
  fp8_dequantize(Exec{}, q, scales, y, how.tile);
  write_tensor(a[3], q);
  write_tensor(a[4], scales);
  write_tensor(a[5], y);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return 2;
  }
  const std::string mode = argv[1];
  try {
    if (mode == "codes") return run_codes({argv + 2, argv + argc});
    if (mode == "convert") return run_convert({argv + 2, argv + argc});
    if (mode == "quantize") return run_quantize({argv + 2, argv + argc});
    if (argc == 7 && is_count(argv[1])) return run_quantize({argv + 1, argv + argc});  // the original form
    throw UsageError{"unknown mode '" + mode + "'"};
  } catch (const UsageError& e) {
    std::fprintf(stderr, "moelab_fp8_quant_tool: %s\n%s", e.what.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moelab_fp8_quant_tool: %s\n", e.what());
    return 1;
  }
}
