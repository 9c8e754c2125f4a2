// SPDX-License-Identifier: MIT
#pragma once
// Input validation: every public function checks its arguments with these before writing any output,
// so a caller who catches kexue::Error finds the outputs untouched.

#include <sstream>
#include <string>
#include <utility>

#include "kexue/core.hpp"

namespace kexue::detail {

/// "[rows x cols]" for messages.
inline std::string shape_str(Index rows, Index cols) {
  return "[" + std::to_string(rows) + " x " + std::to_string(cols) + "]";
}

template <class... Parts>
[[noreturn]] inline void fail(const char* function, Parts&&... parts) {
  std::ostringstream os;
  os << function << ": ";
  (os << ... << std::forward<Parts>(parts));
  throw Error(os.str());
}

/// Throws kexue::Error("function: parts...") unless ok.
template <class... Parts>
inline void require(bool ok, const char* function, Parts&&... parts) {
  if (!ok) fail(function, std::forward<Parts>(parts)...);
}

/// Throws unless the matrix argument `name` has the given shape; a negative expected size matches anything.
template <class View>
inline void require_shape(const char* function, const char* name, const View& v, Index rows, Index cols,
                          const char* why = nullptr) {
  if ((rows >= 0 && v.rows != rows) || (cols >= 0 && v.cols != cols)) {
    fail(function, name, " has shape ", shape_str(v.rows, v.cols), " but ", why ? why : "expected ",
         shape_str(rows, cols));
  }
}

}  // namespace kexue::detail
