// SPDX-License-Identifier: MIT
#pragma once
/// @file
/// Random numbers for sampling: a generator bit-compatible with PyTorch's CPU torch.randn, and a
/// counter-based Philox 4x32-10 generator whose output does not depend on the thread count (the fast
/// default for DDPM noise).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kexue/core.hpp"
#include "kexue/detail/check.hpp"
#include "kexue/detail/parallel.hpp"
#include "kexue/detail/random_mt19937.hpp"
#include "kexue/detail/random_philox.hpp"
#include "kexue/detail/random_torch.hpp"
#include "kexue/detail/view.hpp"

namespace kexue {

namespace detail {
template <class Derived>
scalar_of<Derived>* random_output(const char* function, const Eigen::DenseBase<Derived>& out);
}  // namespace detail

/// Bit-compatible with `torch.manual_seed(seed); torch.randn(n)` on the CPU (torch 1.13, float32, and
/// float64 for double outputs), including consecutive calls on one generator:
/// - the engine is mt19937 seeded with the low 32 bits of seed (torch's CPUGeneratorImpl), drawn in bulk
///   (detail::Mt19937: std::mt19937's sequence, twisted and tempered 8 words at a time);
/// - n >= 16: n uniforms u = (r & 0xFFFFFF) 2^-24 from one 32-bit draw each (53 bits from two draws for
///   double), Box-Muller on chunks of 16 (u1 = 1 - u[j], u2 = u[j + 8], j < 8); when 16 does not divide n, 16
///   fresh uniforms replace the last 16 values; float uses torch's AVX2 Cephes log/sincos bit for bit (at any register
///   width), double uses libm as torch does;
/// - n < 16: one double Box-Muller pair per two values from 53-bit uniforms, the sine half cached in the
///   generator for the next value (also across calls), as at::normal_distribution<double> does.
/// The float n >= 16 path matches torch builds that dispatch to AVX2 or AVX512 (any x86-64 CPU with AVX2);
/// torch's DEFAULT-capability path (CPUs without AVX2) uses libm there instead. kexue's values are the same bits
/// in every build of kexue (any register width, SSE2 and ARM64 included).
class TorchGenerator {
 public:
  /// torch.manual_seed(seed).
  explicit TorchGenerator(std::uint64_t seed = 67280421310721ull) { manual_seed(seed); }

  /// Reseeds and drops the cached normal, as torch.manual_seed does.
  void manual_seed(std::uint64_t seed) {
    engine_.reseed(static_cast<std::uint32_t>(seed & 0xffffffffu));
    has_cached_normal_ = false;
  }

  /// Next 32-bit draw (torch's CPUGeneratorImpl::random).
  std::uint32_t random() { return static_cast<std::uint32_t>(engine_()); }
  /// Next 64-bit draw: first 32-bit draw in the high half (CPUGeneratorImpl::random64).
  std::uint64_t random64() {
    const std::uint64_t hi = random(), lo = random();
    return (hi << 32) | lo;
  }

  /// Fills out (any contiguous Eigen dense object, float or double) as one torch.randn(out.size()) call.
  template <class Derived>
  void normal(const Eigen::DenseBase<Derived>& out) {
    auto* p = detail::random_output("TorchGenerator::normal", out);
    normal(p, static_cast<Index>(out.size()));
  }

  /// out[0..n) as one torch.randn(n) call (dtype float32).
  void normal(float* out, Index n) { fill(out, n); }
  /// out[0..n) as one torch.randn(n, dtype=torch.float64) call.
  void normal(double* out, Index n) { fill(out, n); }

 private:
  float uniform(float) { return static_cast<float>(random() & 0xFFFFFFu) * (1.0f / 16777216.0f); }
  double uniform(double) {
    return static_cast<double>(random64() & ((std::uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
  }

  // at::normal_distribution<double>: u1 -> angle, u2 -> radius, sine half cached.
  double scalar_normal() {
    if (has_cached_normal_) {
      has_cached_normal_ = false;
      return cached_normal_;
    }
    const double u1 = uniform(0.0), u2 = uniform(0.0);
    const double r = std::sqrt(-2.0 * std::log(1.0 - u2));
    const double theta = 2.0 * 3.14159265358979323846 * u1;
    cached_normal_ = r * std::sin(theta);
    has_cached_normal_ = true;
    return r * std::cos(theta);
  }

  static void fill16(float* data) { detail::torch_normal_fill_16(data); }
  static void fill_chunks(float* data, Index chunks) { detail::torch_normal_fill_chunks(data, chunks); }
  static void fill_chunks(double* data, Index chunks) {
    for (Index c = 0; c < chunks; ++c) fill16(data + 16 * c);
  }
  static void fill16(double* data) {
    for (int j = 0; j < 8; ++j) {
      const double u1 = 1.0 - data[j], u2 = data[j + 8];
      const double radius = std::sqrt(-2.0 * std::log(u1));
      const double theta = static_cast<double>(2.0f) * 3.14159265358979323846 * u2;
      data[j] = radius * std::cos(theta);
      data[j + 8] = radius * std::sin(theta);
    }
  }

  template <class T>
  void fill(T* out, Index n) {
    if (n < 16) {
      for (Index i = 0; i < n; ++i) out[i] = static_cast<T>(scalar_normal());
      return;
    }
    uniforms(out, n);
    fill_chunks(out, n / 16);
    if (n % 16 != 0) {
      T* tail = out + n - 16;
      uniforms(tail, 16);
      fill16(tail);
    }
  }

  // out[i] = uniform(T()) for i in [0, n), in order, with the draws made in bulk.
  static constexpr Index kDrawBlock = 256;
  void uniforms(float* out, Index n) {
    alignas(32) std::uint32_t w[kDrawBlock];
    for (Index i = 0; i < n; i += kDrawBlock) {
      const Index take = std::min(kDrawBlock, n - i);
      engine_.generate(w, take);
      for (Index k = 0; k < take; ++k)  // < 2^24: exact through int32, and the loop vectorises
        out[i + k] = static_cast<float>(static_cast<std::int32_t>(w[k] & 0xFFFFFFu)) * (1.0f / 16777216.0f);
    }
  }
  void uniforms(double* out, Index n) {
    alignas(32) std::uint32_t w[kDrawBlock];
    for (Index i = 0; i < n; i += kDrawBlock / 2) {
      const Index take = std::min(kDrawBlock / 2, n - i);
      engine_.generate(w, 2 * take);
      for (Index k = 0; k < take; ++k) {  // random64: the first draw is the high half
        const std::uint64_t r = (std::uint64_t(w[2 * k]) << 32) | w[2 * k + 1];
        out[i + k] = static_cast<double>(r & ((std::uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
      }
    }
  }

  detail::Mt19937 engine_;
  // The sine half of the last scalar Box-Muller pair (a flag and a value rather than std::optional, which
  // GCC 12 reports as maybe-uninitialized once this class is inlined into a caller).
  bool has_cached_normal_ = false;
  double cached_normal_ = 0;
};

/// Counter-based normal generator: Philox 4x32-10 (key = seed, counter = block index) and a Box-Muller
/// transform of 24-bit uniforms. Value number p of a stream is a pure function of (seed, p), so a fill is
/// reproducible for any thread count and any split into calls: normal(a) then normal(b) gives the same
/// numbers as one call over a and b concatenated. Large fills run in parallel (OpenMP). The stream is also the
/// same bits for every build: any register width (SSE2, AVX2, AVX-512, NEON) and any thread count.
class PhiloxGenerator {
 public:
  /// The stream `seed`, positioned at value number `offset`.
  explicit PhiloxGenerator(std::uint64_t seed, std::uint64_t offset = 0) : seed_(seed), offset_(offset) {}

  /// The seed (Philox key) of this stream.
  std::uint64_t seed() const { return seed_; }
  /// Position of the next value in the stream.
  std::uint64_t offset() const { return offset_; }
  /// Moves to value number `offset` of the stream (forwards or backwards; nothing is drawn).
  void set_offset(std::uint64_t offset) { offset_ = offset; }

  /// Fills out (any contiguous Eigen dense object, float or double) with the next out.size() values.
  template <class Derived>
  void normal(const Eigen::DenseBase<Derived>& out) {
    auto* p = detail::random_output("PhiloxGenerator::normal", out);
    normal(p, static_cast<Index>(out.size()));
  }

  /// out[0..n) = values offset .. offset + n - 1; advances the offset by n. Double outputs are the float
  /// values widened.
  template <class T>
  void normal(T* out, Index n) {
    detail::require(n >= 0, "PhiloxGenerator::normal", "n must be >= 0, got ", n);
    fill_at(seed_, offset_, out, n);
    offset_ += static_cast<std::uint64_t>(n);
  }

  /// out[i] = value (position + i) of stream seed: a pure function, no generator state.
  template <class T>
  static void fill_at(std::uint64_t seed, std::uint64_t position, T* out, Index n) {
    // Chunks are whole multiples of the 32-value group, so a thread computes each group at most once; 64 KiB
    // of floats per chunk keeps the scheduling overhead negligible.
    // Below four chunks the fill is serial: a parallel region costs about as much as 16K normals.
    constexpr Index kChunk = 512 * detail::kPhiloxGroup;
    if (n < 4 * kChunk) {
      detail::philox_normal_serial(seed, position, out, n);
      return;
    }
    const Index chunks = (n + kChunk - 1) / kChunk;
    detail::parallel_for(chunks, [&](Index c) {
      const Index begin = c * kChunk, len = std::min(kChunk, n - begin);
      detail::philox_normal_serial(seed, position + std::uint64_t(begin), out + begin, len);
    });
  }

 private:
  std::uint64_t seed_;
  std::uint64_t offset_;
};

namespace detail {
template <class Derived>
scalar_of<Derived>* random_output(const char* function, const Eigen::DenseBase<Derived>& out) {
  static_assert(bool(Derived::Flags & Eigen::LvalueBit), "kexue: an output argument must be writable");
  static_assert(std::is_same<scalar_of<Derived>, float>::value || std::is_same<scalar_of<Derived>, double>::value,
                "kexue random generators fill float or double");
  return const_cast<scalar_of<Derived>*>(flat_data(function, "out", out));
}
}  // namespace detail

}  // namespace kexue
