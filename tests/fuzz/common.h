// What every harness shares. The rule a reader of outside input must keep: it either succeeds or
// throws a moelab::Error (whose message names the file and the problem). Anything else -- another
// exception, a crash, an out-of-bounds read, undefined behaviour, a huge allocation -- is a bug the
// harness reports (libFuzzer and ASan/UBSan catch the crashes, expect_clean the exceptions).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace moelab::fuzz {

// A path in this process's own scratch directory (made on first use, under $TMPDIR or /tmp).
std::string scratch_path(const std::string& name);
// Writes the input to scratch_path(name), for the readers that take a path. Returns the path.
std::string write_input(const uint8_t* data, size_t size, const std::string& name);

[[noreturn]] void report_unclean(const char* what);  // prints the exception and aborts

// Runs f; a moelab::Error is the clean refusal of bad input, any other exception is a bug.
template <class F>
void expect_clean(F&& f) {
  try {
    f();
  } catch (const Error&) {
  } catch (const std::exception& e) {
    report_unclean(e.what());
  }
}

}  // namespace moelab::fuzz
