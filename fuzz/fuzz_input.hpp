// SPDX-License-Identifier: MIT
#pragma once
// Turns a fuzzer's byte string into the shapes, options and values a kernel call needs. Running out of bytes
// yields zeros, so every input is valid to consume.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "kexue/core.hpp"

namespace kexue_fuzz {

using kexue::Index;

class FuzzInput {
 public:
  FuzzInput(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  bool flag() { return byte() & 1; }
  /// An integer in [lo, hi].
  Index range(Index lo, Index hi) {
    std::uint32_t v = byte();
    v = (v << 8) | byte();
    return lo + static_cast<Index>(v % static_cast<std::uint32_t>(hi - lo + 1));
  }
  /// A size biased towards SIMD lane and tile boundaries.
  Index size(Index max) {
    static const Index edges[] = {0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65};
    if (flag()) {
      const Index e = edges[byte() % (sizeof(edges) / sizeof(edges[0]))];
      return e <= max ? e : max;
    }
    return range(0, max);
  }
  /// A value: mostly ordinary, sometimes special (+-inf, NaN, denormal, huge, zero).
  template <class T>
  T value(bool allow_special = true) {
    const std::uint8_t kind = byte();
    if (allow_special && kind >= 240) {
      switch (kind % 8) {
        case 0: return std::numeric_limits<T>::infinity();
        case 1: return -std::numeric_limits<T>::infinity();
        case 2: return std::numeric_limits<T>::quiet_NaN();
        case 3: return std::numeric_limits<T>::denorm_min() * T(byte());
        case 4: return T(1e30);
        case 5: return T(-1e30);
        case 6: return T(0);
        default: return -T(0);
      }
    }
    const std::int16_t raw = static_cast<std::int16_t>((byte() << 8) | byte());
    return static_cast<T>(raw) / T(4096) * (kind < 32 ? T(16) : T(1));
  }
  template <class T>
  std::vector<T> values(Index n, bool allow_special = true) {
    std::vector<T> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = value<T>(allow_special);
    return v;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

/// Aborts (a finding) with a message when `ok` is false.
inline void expect(bool ok, const char* what, double got = 0, double want = 0) {
  if (!ok) {
    std::fprintf(stderr, "fuzz finding: %s (got %.9g, want %.9g)\n", what, got, want);
    std::abort();
  }
}

/// |got - want| <= tol * max(1, |want|) where want is finite; got must be finite where want is.
inline void expect_close(double got, double want, double tol, const char* what) {
  if (std::isnan(want)) return;
  if (std::isinf(want)) {
    expect(got == want, what, got, want);
    return;
  }
  expect(std::isfinite(got), what, got, want);
  expect(std::abs(got - want) <= tol * std::max(1.0, std::abs(want)), what, got, want);
}

}  // namespace kexue_fuzz
