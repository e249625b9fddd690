// Errors and checks. Library code never calls exit(): it throws moelab::Error, whose message starts
// with file:line and names the bad value and what was expected, e.g.
//   MOELAB_CHECK(x.ndim() == 2, "rmsnorm: x must be 2-D, got shape ", x.shape_str());
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace moelab {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
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
  throw Error(concat(file, ":", line, ": ", args...));
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
