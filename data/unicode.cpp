// UTF-8 decoding, the GPT-2 regex character classes and GPT-2's byte <-> unicode table (unicode.h).
#include "data/unicode.h"

#include <algorithm>

namespace moelab::unicode {

namespace {

bool is_cont(unsigned char c) { return (c & 0xC0) == 0x80; }

bool in_ranges(uint32_t cp, const CodepointRange* ranges, size_t n) {
  // The first range whose last >= cp; cp is inside when that range also starts at or before cp.
  const CodepointRange* end = ranges + n;
  const CodepointRange* r =
      std::lower_bound(ranges, end, cp, [](const CodepointRange& a, uint32_t v) { return a.last < v; });
  return r != end && r->first <= cp;
}

// The printable bytes that GPT-2 keeps as themselves: '!'..'~', '¡'..'¬', '®'..'ÿ'.
bool is_visible_byte(int b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

struct ByteTable {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 324> from_cp{};  // code points used are < 256 + 68
  ByteTable() {
    from_cp.fill(-1);
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      to_cp[b] = is_visible_byte(b) ? static_cast<uint32_t>(b) : static_cast<uint32_t>(256 + n++);
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const ByteTable& byte_table() {
  static const ByteTable table;
  return table;
}

}  // namespace

Utf8Char next_utf8(std::string_view s, size_t i) {
  const auto at = [&](size_t k) { return k < s.size() ? static_cast<unsigned char>(s[k]) : 0u; };
  const unsigned char c0 = at(i);
  if (c0 < 0x80) return {c0, 1};
  // Well-formed sequences (Unicode Table 3-7): the second byte's range depends on the first byte,
  // which rules out overlong forms, surrogates (U+D800..U+DFFF) and code points above U+10FFFF.
  int len = 0;
  unsigned lo = 0x80, hi = 0xBF;
  if (c0 >= 0xC2 && c0 <= 0xDF) len = 2;
  else if (c0 == 0xE0) len = 3, lo = 0xA0;
  else if (c0 >= 0xE1 && c0 <= 0xEC) len = 3;
  else if (c0 == 0xED) len = 3, hi = 0x9F;
  else if (c0 >= 0xEE && c0 <= 0xEF) len = 3;
  else if (c0 == 0xF0) len = 4, lo = 0x90;
  else if (c0 >= 0xF1 && c0 <= 0xF3) len = 4;
  else if (c0 == 0xF4) len = 4, hi = 0x8F;
  else return {kInvalid, 1};
  if (i + len > s.size()) return {kInvalid, 1};
  const unsigned char c1 = at(i + 1);
  if (c1 < lo || c1 > hi) return {kInvalid, 1};
  for (int k = 2; k < len; ++k)
    if (!is_cont(at(i + k))) return {kInvalid, 1};
  uint32_t cp = c0 & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (at(i + k) & 0x3F);
  return {cp, len};
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

CharClass classify(uint32_t cp) {
  if (cp < 0x80) {  // ASCII, the common case, without a table search
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')) return CharClass::Letter;
    if (cp >= '0' && cp <= '9') return CharClass::Number;
    if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return CharClass::Space;
    return CharClass::Other;
  }
  if (cp == kInvalid) return CharClass::Other;
  switch (cp) {
    case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
      return CharClass::Space;
    default:
      if (cp >= 0x2000 && cp <= 0x200A) return CharClass::Space;
  }
  if (in_ranges(cp, kLetterRanges, kNumLetterRanges)) return CharClass::Letter;
  if (in_ranges(cp, kNumberRanges, kNumNumberRanges)) return CharClass::Number;
  return CharClass::Other;
}

uint32_t byte_to_codepoint(uint8_t b) { return byte_table().to_cp[b]; }

int codepoint_to_byte(uint32_t cp) { return cp < byte_table().from_cp.size() ? byte_table().from_cp[cp] : -1; }

std::string bytes_to_visible(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) append_utf8(out, byte_to_codepoint(b));
  return out;
}

bool visible_to_bytes(std::string_view visible, std::string* bytes) {
  bytes->clear();
  for (size_t i = 0; i < visible.size();) {
    const Utf8Char c = next_utf8(visible, i);
    const int b = c.cp == kInvalid ? -1 : codepoint_to_byte(c.cp);
    if (b < 0) return false;
    *bytes += static_cast<char>(b);
    i += static_cast<size_t>(c.len);
  }
  return true;
}

}  // namespace moelab::unicode
