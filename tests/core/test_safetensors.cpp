// The safetensors reader/writer: round trips of every dtype, bytes that match the format by hand,
// and malformed files that must give a clear error (never a crash or a huge allocation).
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "core/safetensors.h"
#include "tests/harness.h"

namespace moelab {
namespace {

std::string temp_path(const std::string& name) { return ::testing::TempDir() + "moelab_" + name; }

void write_raw(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A file with the given JSON header and `data_bytes` bytes of data.
std::string make_file(const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return s + header + std::string(data_bytes, '\x01');
}

std::string read_error(const std::string& bytes, const std::string& name) {
  const std::string path = temp_path(name);
  write_raw(path, bytes);
  try {
    read_safetensors(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(Safetensors, RoundTripsEveryDtypeAndMetadata) {
  Tensor f = testing::randn({3, 5}, DType::F32, 1);
  Tensor d = testing::randn({2, 1, 3}, DType::F64, 2);
  Tensor b = f.to(DType::BF16), q = f.to(DType::FP8_E4M3);
  Tensor i = testing::randint({7}, 100, 3);
  Tensor s = Tensor::empty({}, DType::F32);
  s.fill(2.5);
  const std::string path = temp_path("roundtrip.safetensors");
  write_safetensors(path, {{"f", f}, {"d", d}, {"b", b}, {"q", q}, {"i", i}, {"scalar", s}}, {{"format", "pt"}});
  const Safetensors st = read_safetensors(path);
  ASSERT_EQ(st.tensors.size(), 6u);
  EXPECT_EQ(st.tensors[0].first, "f");  // file order is write order
  EXPECT_EQ(st.metadata.at("format"), "pt");
  EXPECT_EQ(st.at("d").shape(), (Shape{2, 1, 3}));
  EXPECT_EQ(st.at("scalar").ndim(), 0);
  EXPECT_EQ(st.at("scalar").data<float>()[0], 2.5f);
  for (const char* n : {"f", "d", "b", "q", "i"}) {
    const Tensor& a = st.at(n);
    const Tensor& e = n[0] == 'f' ? f : n[0] == 'd' ? d : n[0] == 'b' ? b : n[0] == 'q' ? q : i;
    ASSERT_EQ(a.dtype(), e.dtype()) << n;
    EXPECT_EQ(std::memcmp(a.raw(), e.raw(), e.nbytes()), 0) << n;
  }
  EXPECT_THROW(st.at("missing"), Error);
}

TEST(Safetensors, WritesTheDocumentedLayout) {
  Tensor t = Tensor::empty({2}, DType::F32);
  t.data<float>()[0] = 1.0f;
  t.data<float>()[1] = -2.0f;
  const std::string path = temp_path("layout.safetensors");
  write_safetensors(path, {{"w", t}});
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u) << "header padded to 8 bytes";
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.find(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})"), 0u) << header;
  EXPECT_EQ(bytes.size(), 8 + n + 8);
  EXPECT_EQ(bytes.substr(8 + n), std::string("\x00\x00\x80\x3f\x00\x00\x00\xc0", 8)) << "little-endian 1.0f, -2.0f";
}

TEST(Safetensors, MalformedFilesGiveClearErrors) {
  const std::string good = R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
  EXPECT_EQ(read_error(make_file(good, 16), "good.st"), "no error");
  struct Case { std::string bytes, expect, what; };
  const Case cases[] = {
      {"", "too short", "empty file"},
      {"abc", "too short", "shorter than the length field"},
      {make_file(good, 16).substr(0, 30), "truncated", "cut inside the header"},
      {make_file(good, 10), "outside the 10 data bytes", "cut inside the data"},
      {std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}", "exceeds", "huge header length"},
      {make_file("{not json", 0), "not valid JSON", "bad JSON"},
      {make_file("[1,2]", 0), "not an object", "JSON array"},
      {make_file(R"({"w":{"dtype":"F17","shape":[4],"data_offsets":[0,16]}})", 16), "dtype 'F17'", "unknown dtype"},
      {make_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", 16), "needs 12 bytes", "shape/size mismatch"},
      {make_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})", 16), "outside", "begin > end"},
      {make_file(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", 16), "outside", "end past the data"},
      {make_file(R"({"w":{"dtype":"F32","shape":[1,1,1,1,4],"data_offsets":[0,16]}})", 16), "at most 4", "5 dims"},
      {make_file(R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", 16), "not a size", "negative dim"},
      {make_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}})", 16), "overflows",
       "numel overflow"},
      {make_file(R"({"w":{"dtype":"F32","shape":[4]}})", 16), "needs dtype, shape and data_offsets", "missing field"},
      {make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                 16),
       "overlap", "overlapping tensors"},
      {make_file(R"({"__metadata__":{"k":1}})", 0), "not a string", "non-string metadata"},
      // Found by fuzz_safetensors (tests/fuzz/corpus/safetensors/crash_number_overflow): the JSON
      // library reports a number too large for a double as out_of_range, not as a parse error.
      {make_file(R"({"w":{"dtype":"F32","shape":[1e999],"data_offsets":[0,4]}})", 4), "not valid JSON",
       "a number too large"},
  };
  int i = 0;
  for (const auto& c : cases) {
    const std::string err = read_error(c.bytes, "bad" + std::to_string(i++) + ".st");
    EXPECT_NE(err.find(c.expect), std::string::npos) << c.what << ": got \"" << err << "\"";
    EXPECT_NE(err.find("moelab_bad"), std::string::npos) << c.what << ": the message names the file: " << err;
  }
  EXPECT_NE(read_error("", "x").find("too short"), std::string::npos);
  try {
    read_safetensors(temp_path("does_not_exist.st"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot open"), std::string::npos);
  }
}

TEST(Safetensors, WriterRejectsDuplicateNamesAndLeavesNoTempFile) {
  Tensor t = Tensor::zeros({2}, DType::F32);
  const std::string path = temp_path("dup.safetensors");
  EXPECT_THROW(write_safetensors(path, {{"a", t}, {"a", t}}), Error);
  write_safetensors(path, {{"a", t}});
  EXPECT_FALSE(std::ifstream(path + ".tmp").good());
  EXPECT_TRUE(std::ifstream(path).good());
}

}  // namespace
}  // namespace moelab
