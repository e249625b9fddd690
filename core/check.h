// Errors and checks. Library code never calls exit(): it throws moelab::Error, whose message names
// the bad value and what was expected, e.g.
//   MOELAB_CHECK(x.ndim() == 2, "rmsnorm: x must be 2-D, got shape ", x.shape_str());
// what() starts with the source file:line that raised it (for logs, tests and bug reports);
// message() is the same without it, which is what the command line shows a user (unless --verbose).
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace moelab {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what), message_(what) {}
  Error(const std::string& source, const std::string& message)
      : std::runtime_error(source + ": " + message), source_(source), message_(message) {}
  const std::string& source() const { return source_; }    // "core/tensor.h:58", or "" when not known
  const std::string& message() const { return message_; }  // what() without the source

 private:
  std::string source_, message_;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
template <typename... Args>
[[noreturn]] void fail(const char* file, int line, const Args&... args) {
  throw Error(concat(file, ":", line), concat(args...));
}
}  // namespace detail

}  // namespace moelab

// Throws moelab::Error("file:line: <message>") unless cond holds. The message arguments are
// streamed with operator<< and only evaluated on failure.
#define MOELAB_CHECK(cond, ...)                                   \
  do {                                                            \
    if (!(cond)) ::moelab::detail::fail(__FILE__, __LINE__, __VA_ARGS__); \
  } while (0)

#define MOELAB_FAIL(...) ::moelab::detail::fail(__FILE__, __LINE__, __VA_ARGS__)
