#include "core/safetensors.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

namespace moelab {

namespace {

const std::pair<const char*, DType> kDtypes[] = {
    {"F32", DType::F32}, {"F64", DType::F64}, {"BF16", DType::BF16}, {"F8_E4M3", DType::FP8_E4M3}, {"I32", DType::I32}};

DType parse_dtype(const std::string& file, const std::string& tensor, const std::string& s) {
  for (const auto& [name, t] : kDtypes)
    if (s == name) return t;
  MOELAB_FAIL(file, ": tensor '", tensor, "' has dtype '", s, "', expected one of F32, F64, BF16, F8_E4M3, I32");
}

uint64_t read_u64_le(const unsigned char* b) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

}  // namespace

const char* safetensors_dtype_name(DType t) {
  for (const auto& [name, d] : kDtypes)
    if (d == t) return name;
  return "?";
}

bool Safetensors::contains(const std::string& name) const {
  for (const auto& nt : tensors)
    if (nt.first == name) return true;
  return false;
}

const Tensor& Safetensors::at(const std::string& name) const {
  for (const auto& nt : tensors)
    if (nt.first == name) return nt.second;
  MOELAB_FAIL("safetensors: no tensor named '", name, "'");
}

Safetensors read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  MOELAB_CHECK(in, path, ": cannot open for reading");
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  MOELAB_CHECK(file_size >= 8, path, ": ", file_size, " bytes, too short for the 8-byte safetensors header length");
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  const uint64_t header_len = read_u64_le(len_bytes);
  MOELAB_CHECK(header_len <= kMaxSafetensorsHeaderBytes, path, ": header length ", header_len, " exceeds the ",
               kMaxSafetensorsHeaderBytes, "-byte limit (not a safetensors file?)");
  MOELAB_CHECK(header_len <= file_size - 8, path, ": header length ", header_len, " but only ", file_size - 8,
               " bytes follow (truncated file)");
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  MOELAB_CHECK(in, path, ": read error in the header");
  const uint64_t data_size = file_size - 8 - header_len;

  nlohmann::ordered_json j;
  try {
    j = nlohmann::ordered_json::parse(header);
  } catch (const nlohmann::ordered_json::exception& e) {  // parse_error, or out_of_range for a number too large
    MOELAB_FAIL(path, ": header is not valid JSON: ", e.what());
  }
  MOELAB_CHECK(j.is_object(), path, ": header is JSON but not an object");

  Safetensors out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::ordered_json& e = it.value();
    if (name == "__metadata__") {
      MOELAB_CHECK(e.is_object(), path, ": __metadata__ must be an object of strings");
      for (auto m = e.begin(); m != e.end(); ++m) {
        MOELAB_CHECK(m.value().is_string(), path, ": __metadata__ value of '", m.key(), "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    MOELAB_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"), path,
                 ": tensor '", name, "' needs dtype, shape and data_offsets");
    MOELAB_CHECK(e["dtype"].is_string(), path, ": tensor '", name, "': dtype is not a string");
    const DType dtype = parse_dtype(path, name, e["dtype"].get<std::string>());
    const nlohmann::ordered_json& js = e["shape"];
    MOELAB_CHECK(js.is_array() && js.size() <= static_cast<size_t>(Shape::kMaxDims), path, ": tensor '", name,
                 "': shape must be an array of at most ", Shape::kMaxDims, " dims, got ", js.dump());
    std::vector<int64_t> dims;
    uint64_t numel = 1;
    for (const auto& d : js) {
      MOELAB_CHECK(d.is_number_unsigned(), path, ": tensor '", name, "': shape entry ", d.dump(), " is not a size");
      const uint64_t v = d.get<uint64_t>();
      MOELAB_CHECK(!__builtin_mul_overflow(numel, v, &numel) && numel <= (uint64_t{1} << 62), path, ": tensor '",
                   name, "': shape ", js.dump(), " overflows");
      dims.push_back(static_cast<int64_t>(v));
    }
    const nlohmann::ordered_json& jo = e["data_offsets"];
    MOELAB_CHECK(jo.is_array() && jo.size() == 2 && jo[0].is_number_unsigned() && jo[1].is_number_unsigned(), path,
                 ": tensor '", name, "': data_offsets must be [begin, end], got ", jo.dump());
    const uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
    MOELAB_CHECK(begin <= end && end <= data_size, path, ": tensor '", name, "': data_offsets [", begin, ", ", end,
                 "] outside the ", data_size, " data bytes (truncated file?)");
    MOELAB_CHECK(end - begin == numel * dtype_size(dtype), path, ": tensor '", name, "': ", dtype_name(dtype),
                 js.dump(), " needs ", numel * dtype_size(dtype), " bytes but data_offsets span ", end - begin);
    ranges.emplace_back(begin, end);
    out.tensors.emplace_back(name, Tensor::empty(Shape(dims), dtype));
    in.seekg(static_cast<std::streamoff>(8 + header_len + begin));
    in.read(static_cast<char*>(out.tensors.back().second.raw()), static_cast<std::streamsize>(end - begin));
    MOELAB_CHECK(in, path, ": read error in tensor '", name, "'");
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    MOELAB_CHECK(ranges[i].first >= ranges[i - 1].second, path, ": tensors overlap at data byte ", ranges[i].first);
  return out;
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    MOELAB_CHECK(name != "__metadata__" && seen.insert(name).second, path, ": tensor name '", name,
                 "' is reserved or used twice");
    check_defined("write_safetensors", name.c_str(), t);
    header[name] = {{"dtype", safetensors_dtype_name(t.dtype())},
                    {"shape", t.shape().dims()},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // pad so that the data starts 8-byte aligned
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MOELAB_CHECK(out, tmp, ": cannot open for writing");
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>((h.size() >> (8 * i)) & 0xff);
    out.write(reinterpret_cast<const char*>(len_bytes), 8);
    out.write(h.data(), static_cast<std::streamsize>(h.size()));
    for (const auto& nt : tensors) {
      const Tensor host = nt.second.device() == Device::CPU ? nt.second : nt.second.to(Device::CPU);
      out.write(static_cast<const char*>(host.raw()), static_cast<std::streamsize>(host.nbytes()));
    }
    out.flush();
    MOELAB_CHECK(out, tmp, ": write failed (disk full?)");
  }
  MOELAB_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "cannot rename ", tmp, " to ", path);
}

}  // namespace moelab
