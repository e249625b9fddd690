// The GPT-2 regex split by hand (pretokenize.h). The regex's alternatives are tried in order at
// each position and the first that matches wins; the cases below follow that order.
#include "data/pretokenize.h"

#include "data/unicode.h"

namespace moelab {

using unicode::CharClass;

namespace {

// The contractions 's 't 're 've 'm 'll 'd (lowercase only, as in GPT-2): their length, or 0.
size_t contraction_length(std::string_view t, size_t i) {
  if (t[i] != '\'' || i + 1 >= t.size()) return 0;
  const char a = t[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 < t.size()) {
    const char b = t[i + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  return 0;
}

// End of the run of characters of class `cls` that starts at byte i.
size_t run_end(std::string_view t, size_t i, CharClass cls) {
  while (i < t.size()) {
    const unicode::Utf8Char c = unicode::next_utf8(t, i);
    if (unicode::classify(c.cp) != cls) break;
    i += static_cast<size_t>(c.len);
  }
  return i;
}

}  // namespace

size_t gpt2_piece_length(std::string_view t, size_t begin) {
  // 's|'t|'re|'ve|'m|'ll|'d
  if (const size_t n = contraction_length(t, begin)) return n;

  const unicode::Utf8Char c = unicode::next_utf8(t, begin);
  const CharClass cls = unicode::classify(c.cp);
  // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`: one optional ASCII space, then a run of one class.
  if (t[begin] == ' ' && begin + 1 < t.size()) {
    const CharClass next = unicode::classify(unicode::next_utf8(t, begin + 1).cp);
    if (next != CharClass::Space) return run_end(t, begin + 1, next) - begin;
  }
  if (cls != CharClass::Space) return run_end(t, begin, cls) - begin;

  // `\s+(?!\S)|\s+`: a run of white space. When a non-space follows, the run gives back its last
  // character, which then starts the next piece (as " word" when it is a space); a run of one
  // character keeps it (the plain `\s+`).
  size_t end = begin, last = begin;
  while (end < t.size()) {
    const unicode::Utf8Char s = unicode::next_utf8(t, end);
    if (unicode::classify(s.cp) != CharClass::Space) break;
    last = end;
    end += static_cast<size_t>(s.len);
  }
  if (end == t.size() || last == begin) return end - begin;
  return last - begin;
}

std::vector<std::string_view> gpt2_split(std::string_view text) {
  std::vector<std::string_view> pieces;
  for_each_gpt2_piece(text, [&](std::string_view p) { pieces.push_back(p); });
  return pieces;
}

}  // namespace moelab
