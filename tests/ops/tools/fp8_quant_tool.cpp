// moelab_fp8_quant_tool: runs the CPU FP8 1x128-tile quantisation (core/ops/fp8_quant.h) on raw data
// for tests/ops/check_fp8_ml_dtypes.py, which compares it with ml_dtypes' float8_e4m3fn.
//   moelab_fp8_quant_tool N D X_FILE Q_FILE SCALES_FILE Y_FILE
// X_FILE: N * D little-endian f32 (row-major [N, D]). Writes Q_FILE: N * D e4m3 bytes,
// SCALES_FILE: N * ceil(D / 128) f32, Y_FILE: the dequantised N * D f32. Exit status 1 with the
// error on stderr, 2 on bad usage.
#include <cstdio>
#include <exception>
#include <fstream>
#include <string>

#include "core/ops/fp8_quant.h"

namespace {

void read_raw(const std::string& path, const moelab::Tensor& t) {
  std::ifstream in(path, std::ios::binary);
  MOELAB_CHECK(in, "cannot open ", path);
  in.read(static_cast<char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
  MOELAB_CHECK(in.gcount() == static_cast<std::streamsize>(t.nbytes()) && in.peek() == EOF, path, " does not hold ",
               t.nbytes(), " bytes (", t.str(), ")");
}

void write_raw(const std::string& path, const moelab::Tensor& t) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(t.raw()), static_cast<std::streamsize>(t.nbytes()));
  MOELAB_CHECK(out, "cannot write ", path);
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moelab;
  if (argc != 7) {
    std::fprintf(stderr, "usage: moelab_fp8_quant_tool N D X_FILE Q_FILE SCALES_FILE Y_FILE\n");
    return 2;
  }
  try {
    const int64_t N = std::stoll(argv[1]), D = std::stoll(argv[2]);
    const Tensor x = Tensor::empty({N, D}, DType::F32), q = Tensor::empty({N, D}, DType::FP8_E4M3);
    const Tensor scales = Tensor::empty({N, fp8_num_blocks(D)}, DType::F32), y = Tensor::empty({N, D}, DType::F32);
    read_raw(argv[3], x);
    fp8_quantize(Exec{}, x, q, scales);
    fp8_dequantize(Exec{}, q, scales, y);
    write_raw(argv[4], q);
    write_raw(argv[5], scales);
    write_raw(argv[6], y);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moelab_fp8_quant_tool: %s\n", e.what());
    return 1;
  }
  return 0;
}
