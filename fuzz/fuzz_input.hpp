// SPDX-License-Identifier: MIT
#pragma once
// Turns a fuzzer's byte string into the shapes, options and values a kernel call needs. Every input is valid
// to consume: once the bytes run out, further bytes come from a splitmix64 stream seeded with a hash of the
// whole input. Why: a matrix of a few thousand values needs more bytes than -max_len allows, and zeros there
// (the earlier behaviour) made the last operand (v in attention) almost always zero, so the differential
// checks compared zeros with zeros. The stream is deterministic, and any mutation of the input reseeds it.

#include <algorithm>
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
  FuzzInput(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {
    std::uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (std::size_t i = 0; i < size; ++i) h = (h ^ data[i]) * 1099511628211ull;
    state_ = h;
  }

  std::uint8_t byte() {
    if (pos_ < size_) return data_[pos_++];
    if (spare_ == 0) {
      std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      bits_ = z ^ (z >> 31);
      spare_ = 8;
    }
    --spare_;
    const std::uint8_t b = static_cast<std::uint8_t>(bits_);
    bits_ >>= 8;
    return b;
  }
  /// True once the fuzzer's own bytes are used up (the rest is the seeded stream).
  bool exhausted() const { return pos_ >= size_; }
  bool flag() { return byte() & 1; }
  /// True with probability k / 256 (rare cases: error paths, special values).
  bool chance(unsigned k) { return byte() >= 256 - k; }
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
  std::uint64_t state_ = 0, bits_ = 0;
  int spare_ = 0;
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


/// True for float: the tolerances of the targets are stated in units of the type's epsilon.
template <class T>
constexpr double eps_of() {
  return double(std::numeric_limits<T>::epsilon());
}

/// Absolute floor of every bound: sums of products that land in T's subnormal range keep no relative
/// precision (and a kernel may flush them), so differences below ~1000 smallest normals are not findings.
template <class T>
constexpr double tiny() {
  return 1024 * double(std::numeric_limits<T>::min());
}

/// A [rows, cols] row-major buffer with a row stride of cols + pad (pad elements filled with NaN, so a kernel
/// that reads them shows it), values from the fuzzer.
template <class T>
struct Strided {
  Index rows = 0, cols = 0, stride = 0;
  std::vector<T> buf;
  Strided() = default;
  Strided(Index r, Index c, Index pad) : rows(r), cols(c), stride(c + pad) {
    buf.assign(static_cast<std::size_t>(std::max<Index>(1, r * stride)), std::numeric_limits<T>::quiet_NaN());
  }
  T* data() { return buf.data(); }
  const T* data() const { return buf.data(); }
  T& operator()(Index r, Index c) { return buf[static_cast<std::size_t>(r * stride + c)]; }
  T operator()(Index r, Index c) const { return buf[static_cast<std::size_t>(r * stride + c)]; }
  T* row(Index r) { return buf.data() + r * stride; }
  const T* row(Index r) const { return buf.data() + r * stride; }
  /// An Eigen map over the buffer with the row stride (what the kernels take).
  Eigen::Map<kexue::Matrix<T>, 0, Eigen::OuterStride<>> map() {
    return {buf.data(), rows, cols, Eigen::OuterStride<>(stride)};
  }
  Eigen::Map<const kexue::Matrix<T>, 0, Eigen::OuterStride<>> cmap() const {
    return {buf.data(), rows, cols, Eigen::OuterStride<>(stride)};
  }
  /// The logical values in double.
  kexue::Matrix<double> to_double() const {
    kexue::Matrix<double> m(rows, cols);
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < cols; ++c) m(r, c) = double((*this)(r, c));
    return m;
  }
  double max_abs() const {
    double m = 0;
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < cols; ++c) m = std::max(m, std::abs(double((*this)(r, c))));
    return m;
  }
  bool all_finite() const {
    for (Index r = 0; r < rows; ++r)
      for (Index c = 0; c < cols; ++c)
        if (!std::isfinite(double((*this)(r, c)))) return false;
    return true;
  }
  /// The padding between rows still holds NaN (nothing wrote outside the logical matrix).
  bool padding_intact() const {
    for (Index r = 0; r < rows; ++r)
      for (Index c = cols; c < stride; ++c)
        if (!std::isnan(double((*this)(r, c)))) return false;
    return true;
  }
};

/// A strided matrix filled from the fuzzer; `special` lets +-inf, NaN, denormals and 1e30 in.
template <class T>
Strided<T> matrix(FuzzInput& in, Index rows, Index cols, bool special, Index max_pad = 9) {
  Strided<T> m(rows, cols, in.range(0, max_pad));
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) m(r, c) = in.value<T>(special);
  return m;
}

/// An output buffer filled with a sentinel, so an error path can be checked to leave it untouched.
template <class T>
Strided<T> sentinel(Index rows, Index cols, Index pad) {
  Strided<T> m(rows, cols, pad);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) m(r, c) = T(-12345.5);
  return m;
}

/// Runs `call` and checks the error contract: kexue::Error exactly when `invalid` is true, and then `out`
/// (bytes) unchanged. Returns true when the call ran (the caller then compares the outputs).
template <class Buf, class F>
bool run_checked(bool invalid, Buf& out, F&& call, const char* what) {
  const Buf before = out;
  try {
    call();
  } catch (const kexue::Error& e) {
    if (!invalid) std::fprintf(stderr, "unexpected kexue::Error: %s\n", e.what());
    expect(invalid, what);
    expect(before.empty() || std::memcmp(before.data(), out.data(), before.size() * sizeof(*out.data())) == 0,
           "an output was written before kexue::Error was thrown");
    return false;
  }
  expect(!invalid, what);
  return true;
}

/// Finite-where-the-reference-is-finite plus an absolute bound: |got - want| <= bound. A NaN or inf
/// reference value is not checked (no promise beyond not crashing).
inline void expect_near(double got, double want, double bound, const char* what) {
  if (!std::isfinite(want)) return;
  expect(std::isfinite(got), what, got, want);
  expect(std::abs(got - want) <= bound, what, got, want);
}

}  // namespace kexue_fuzz
