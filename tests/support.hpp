// SPDX-License-Identifier: MIT
#pragma once
// Shared test utilities: error metrics, random data, NaN-padded buffers for SIMD edge tests.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "catch_compat.hpp"
#include "kexue/core.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace kexue_test {

using kexue::Index;

/// Normalised squared error sum (a-b)^2 / max(sum b^2, tiny), the metric ggml's backend tests use.
/// Entries where both are equal (including both +-inf) contribute 0; a NaN or a mismatched inf gives inf.
template <class A, class B>
double nmse(const A& a, const B& b) {
  double num = 0, den = 0;
  for (Index i = 0; i < static_cast<Index>(b.size()); ++i) {
    const double x = static_cast<double>(a.data()[i]), y = static_cast<double>(b.data()[i]);
    if (x == y) {
      if (std::isfinite(y)) den += y * y;
      continue;
    }
    if (!std::isfinite(x) || !std::isfinite(y)) return std::numeric_limits<double>::infinity();
    num += (x - y) * (x - y);
    den += y * y;
  }
  return num / std::max(den, 1e-300);
}

/// max |a - b| over entries that are not equal (inf == inf counts as equal).
template <class A, class B>
double max_abs_diff(const A& a, const B& b) {
  double m = 0;
  for (Index i = 0; i < static_cast<Index>(b.size()); ++i) {
    const double x = static_cast<double>(a.data()[i]), y = static_cast<double>(b.data()[i]);
    if (x == y) continue;
    if (std::isnan(x) || std::isnan(y) || !std::isfinite(x) || !std::isfinite(y))
      return std::numeric_limits<double>::infinity();
    m = std::max(m, std::abs(x - y));
  }
  return m;
}

/// Default NMSE bound for a kernel in precision T: ~ (c * eps)^2.
template <class T>
constexpr double nmse_bound() {
  return std::is_same<T, float>::value ? 1e-10 : 1e-24;
}

/// Uniform values in [lo, hi) from a fixed seed.
template <class T>
std::vector<T> random_values(Index n, std::uint32_t seed, T lo = T(-1), T hi = T(1)) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<T> v(static_cast<std::size_t>(n));
  for (auto& x : v) x = static_cast<T>(dist(gen));
  return v;
}

/// A buffer whose data starts `offset` elements into an allocation surrounded by NaN, so a kernel that
/// reads past its data or depends on alignment shows up as a NaN in the result.
template <class T>
struct PaddedBuffer {
  static constexpr Index kGuard = 64;
  std::vector<T> storage;
  Index offset;
  PaddedBuffer(Index n, Index offset_ = 0)
      : storage(static_cast<std::size_t>(n + 2 * kGuard + offset_), std::numeric_limits<T>::quiet_NaN()),
        offset(offset_) {}
  T* data() { return storage.data() + kGuard + offset; }
  /// True when the guard regions still hold NaN (nothing wrote past the data).
  bool guards_intact(Index n) const {
    for (Index i = 0; i < kGuard + offset; ++i)
      if (!std::isnan(storage[static_cast<std::size_t>(i)])) return false;
    for (std::size_t i = static_cast<std::size_t>(kGuard + offset + n); i < storage.size(); ++i)
      if (!std::isnan(storage[i])) return false;
    return true;
  }
};

/// The sizes every SIMD helper is swept over: around 0, one register, and several registers.
inline std::vector<Index> lane_sizes(Index lanes) {
  return {0, 1, 3, 7, lanes - 1, lanes, lanes + 1, 2 * lanes + 1, 3 * lanes, 8 * lanes + 2};
}

/// OpenMP's thread count for the next parallel regions (no-op without OpenMP).
inline void set_threads(int t) {
#if defined(_OPENMP)
  omp_set_num_threads(t);
#else
  (void)t;
#endif
}

/// The processors OpenMP sees (1 without OpenMP): what a test restores after set_threads.
inline int hardware_threads() {
#if defined(_OPENMP)
  return omp_get_num_procs();
#else
  return 1;
#endif
}

/// Calls f and checks that it throws kexue::Error whose message contains part (a test failure otherwise).
template <class F>
void throws_with(F&& f, const std::string& part) {
  try {
    f();
  } catch (const kexue::Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(part) != std::string::npos);
    return;
  }
  FAIL("no kexue::Error thrown; expected one mentioning " << part);
}

/// A NaN in an input reaches exactly the rows that use it, on every path and ISA (torch's rule): each row i with
/// sees(i) must be NaN in every column of `poisoned`; every other row must keep the bits of `clean` and be finite.
/// Returns how many rows were NaN (so a caller can check the NaN did reach someone).
template <class A, class B, class Sees>
Index expect_nan_reaches(const A& clean, const B& poisoned, Sees sees, const std::string& what) {
  INFO(what);
  Index nan_rows = 0, bad_nan = 0, bad_clean = 0;
  for (Index i = 0; i < Index(clean.rows()); ++i) {
    bool all_nan = true, same = true;
    for (Index c = 0; c < Index(clean.cols()); ++c) {
      const auto x = clean(i, c), y = poisoned(i, c);
      all_nan = all_nan && std::isnan(double(y));
      same = same && std::isfinite(double(y)) && std::memcmp(&x, &y, sizeof x) == 0;
    }
    if (sees(i)) {
      bad_nan += !all_nan;
      nan_rows += all_nan;
    } else {
      bad_clean += !same;
    }
  }
  CHECK(bad_nan == 0);
  CHECK(bad_clean == 0);
  return nan_rows;
}

}  // namespace kexue_test
