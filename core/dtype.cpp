#include "core/dtype.h"

#include "core/check.h"

namespace moelab {

DType dtype_from_name(const std::string& name) {
  for (DType t : {DType::F32, DType::F64, DType::BF16, DType::FP8_E4M3, DType::I32})
    if (name == dtype_name(t)) return t;
  MOELAB_FAIL("unknown dtype '", name, "': expected one of f32, f64, bf16, fp8_e4m3, i32");
}

}  // namespace moelab
