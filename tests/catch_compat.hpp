// SPDX-License-Identifier: MIT
#pragma once
// One test suite for Catch2 v2 (Debian 12: 2.13) and v3 (upstream). tests/CMakeLists.txt defines
// KEXUE_CATCH2_MAJOR from the version of the Catch2 that find_package found (the one the tests link), so the
// headers match the library even when the other major version is installed too; __has_include decides only
// when it is not defined (a test compiled by hand).
#if !defined(KEXUE_CATCH2_MAJOR)
#if __has_include(<catch2/catch_all.hpp>)
#define KEXUE_CATCH2_MAJOR 3
#else
#define KEXUE_CATCH2_MAJOR 2
#endif
#endif

#include <string>

#if KEXUE_CATCH2_MAJOR >= 3
#include <catch2/catch_all.hpp>
using Catch::Approx;
#elif KEXUE_CATCH2_MAJOR == 2
#include <catch2/catch.hpp>
#else
#error "KEXUE_CATCH2_MAJOR must be 2 or 3"
#endif

namespace kexue_test {

/// Matches a string (an exception's message in CHECK_THROWS_WITH, or CHECK_THAT) that contains `part`:
/// Catch::Contains in v2, Catch::Matchers::ContainsSubstring in v3 (v3 has no Catch::Contains).
inline auto contains(const std::string& part) {
#if KEXUE_CATCH2_MAJOR >= 3
  return Catch::Matchers::ContainsSubstring(part);
#else
  return Catch::Matchers::Contains(part);
#endif
}

}  // namespace kexue_test
