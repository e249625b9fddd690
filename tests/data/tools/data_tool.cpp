// moelab_data_tool: a small command line over data/ for tests/data/check_hf_tokenizer.py, which
// compares moelab's tokenizers with Hugging Face `tokenizers` and reads a shard written by Python.
//   moelab_data_tool build <char|byte|bpe> <text file> <vocab size (bpe)> <out tokenizer.json>
//   moelab_data_tool encode <tokenizer.json> <text file> <out ids file> [plain|special]
//   moelab_data_tool decode <tokenizer.json> <ids file> <out text file>
//   moelab_data_tool split <text file> <out file>           GPT-2 pre-tokenizer pieces, one a line,
//                                                           in GPT-2's visible byte alphabet
//   moelab_data_tool shard <shard file> <vocab size>          prints the tokens, space-separated
// Ids files hold decimal ids separated by spaces. Exit status 1 with the error on stderr.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "data/pretokenize.h"
#include "data/shard.h"
#include "data/tokenizer.h"
#include "data/unicode.h"

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MOELAB_CHECK(in, "cannot open ", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_ids(const std::string& path, const std::vector<int32_t>& ids) {
  std::ofstream out(path, std::ios::trunc);
  for (size_t i = 0; i < ids.size(); ++i) out << (i ? " " : "") << ids[i];
  out << "\n";
  MOELAB_CHECK(out, "cannot write ", path);
}

int usage() {
  std::cerr << "usage: moelab_data_tool build <char|byte|bpe> <text> <vocab> <out.json>\n"
               "       moelab_data_tool encode <tokenizer.json> <text> <out ids> [plain|special]\n"
               "       moelab_data_tool decode <tokenizer.json> <ids> <out text>\n"
               "       moelab_data_tool split <text> <out>\n"
               "       moelab_data_tool shard <shard> <vocab>\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moelab;
  const std::vector<std::string> a(argv + 1, argv + argc);
  try {
    if (a.size() == 5 && a[0] == "build") {
      const TokenizerKind kind = parse_tokenizer_kind(a[1]);
      const std::string text = read_file(a[2]);
      Tokenizer t = kind == TokenizerKind::Char   ? Tokenizer::build_char(text)
                    : kind == TokenizerKind::Byte ? Tokenizer::build_byte()
                                                  : Tokenizer::train_bpe(text, std::stoll(a[3]));
      t.save(a[4]);
      std::cout << tokenizer_kind_name(kind) << " tokenizer, " << t.vocab_size() << " tokens -> " << a[4] << "\n";
    } else if ((a.size() == 4 || a.size() == 5) && a[0] == "encode") {
      const Tokenizer t = Tokenizer::load(a[1]);
      const std::string text = read_file(a[2]);
      const bool special = a.size() == 5 && a[4] == "special";
      write_ids(a[3], special ? t.encode_with_special(text) : t.encode(text));
    } else if (a.size() == 4 && a[0] == "decode") {
      const Tokenizer t = Tokenizer::load(a[1]);
      std::istringstream in(read_file(a[2]));
      std::vector<int32_t> ids;
      for (int32_t id; in >> id;) ids.push_back(id);
      std::ofstream out(a[3], std::ios::binary | std::ios::trunc);
      out << t.decode(ids);
    } else if (a.size() == 3 && a[0] == "split") {
      const std::string text = read_file(a[1]);
      std::ofstream out(a[2], std::ios::binary | std::ios::trunc);
      for_each_gpt2_piece(text, [&](std::string_view p) { out << unicode::bytes_to_visible(p) << "\n"; });
    } else if (a.size() == 3 && a[0] == "shard") {
      const std::vector<int32_t> ids = read_shard(a[1], std::stoll(a[2]));
      for (size_t i = 0; i < ids.size(); ++i) std::cout << (i ? " " : "") << ids[i];
      std::cout << "\n";
    } else {
      return usage();
    }
  } catch (const std::exception& e) {
    std::cerr << "moelab_data_tool: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
