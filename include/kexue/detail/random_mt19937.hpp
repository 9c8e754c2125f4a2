// SPDX-License-Identifier: MIT
#pragma once
// MT19937 with a bulk interface: the same sequence as std::mt19937 (and as PyTorch's CPU generator, which is
// MT19937 seeded the standard way), but the twist of the 624-word state and the tempering of a run of draws
// are done 8 words at a time with AVX2. std::mt19937 tempers one draw per call, which made it most of the
// cost of a torch.randn-compatible fill. This is a SIMD helper file (it talks to the intrinsics directly,
// like random_philox.hpp) with a portable fallback that performs the same integer operations.

#include <algorithm>
#include <cstdint>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "kexue/core.hpp"

namespace kexue::detail {

class Mt19937 {
 public:
  static constexpr int kStateWords = 624;
  static constexpr int kShift = 397;

  explicit Mt19937(std::uint32_t seed = 5489u) { reseed(seed); }

  /// std::mt19937::seed(seed): the standard initialisation of the state from one 32-bit word.
  void reseed(std::uint32_t seed) {
    x_[0] = seed;
    for (int i = 1; i < kStateWords; ++i) x_[i] = 1812433253u * (x_[i - 1] ^ (x_[i - 1] >> 30)) + std::uint32_t(i);
    next_ = kStateWords;
  }

  /// The next draw.
  std::uint32_t operator()() {
    if (next_ == kStateWords) twist();
    return temper(x_[next_++]);
  }

  /// out[0..n) = the next n draws (exactly n calls of operator()).
  void generate(std::uint32_t* out, Index n) {
    while (n > 0) {
      if (next_ == kStateWords) twist();
      const int take = static_cast<int>(std::min<Index>(n, kStateWords - next_));
      temper_run(x_ + next_, out, take);
      next_ += take;
      out += take;
      n -= take;
    }
  }

 private:
  static constexpr std::uint32_t kMatrixA = 0x9908b0dfu, kUpper = 0x80000000u, kLower = 0x7fffffffu;

  static std::uint32_t temper(std::uint32_t y) {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
  }

  // x[k] = x[k + kShift (mod 624)] ^ twisted(x[k] upper bit, x[k + 1] lower bits), for k = 0 .. 623 in order:
  // x[k + 1] is always the old word and x[k + kShift - 624] (k >= 227) is already the new one. A block of 8
  // consecutive k keeps both properties: it reads x[k + 8] before the next block writes it, and the new words
  // it reads are at least 227 positions back.
  void twist() {
    constexpr int kFirst = kStateWords - kShift;  // 227: words whose partner is still old
    int k = 0;
#if defined(__AVX2__)
    for (; k + 8 <= kFirst; k += 8) twist8(k, k + kShift);
#endif
    for (; k < kFirst; ++k) twist1(k, k + kShift);
#if defined(__AVX2__)
    for (; k + 8 <= kStateWords - 1; k += 8) twist8(k, k - kFirst);
#endif
    for (; k < kStateWords - 1; ++k) twist1(k, k - kFirst);
    const std::uint32_t y = (x_[kStateWords - 1] & kUpper) | (x_[0] & kLower);
    x_[kStateWords - 1] = x_[kShift - 1] ^ (y >> 1) ^ ((y & 1u) ? kMatrixA : 0u);
    next_ = 0;
  }

  void twist1(int k, int partner) {
    const std::uint32_t y = (x_[k] & kUpper) | (x_[k + 1] & kLower);
    x_[k] = x_[partner] ^ (y >> 1) ^ ((y & 1u) ? kMatrixA : 0u);
  }

#if defined(__AVX2__)
  void twist8(int k, int partner) {
    const auto ld = [&](int i) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x_ + i)); };
    const __m256i y = _mm256_or_si256(_mm256_and_si256(ld(k), _mm256_set1_epi32(static_cast<int>(kUpper))),
                                      _mm256_and_si256(ld(k + 1), _mm256_set1_epi32(static_cast<int>(kLower))));
    const __m256i odd = _mm256_srai_epi32(_mm256_slli_epi32(y, 31), 31);  // all ones where y is odd
    const __m256i mag = _mm256_and_si256(odd, _mm256_set1_epi32(static_cast<int>(kMatrixA)));
    const __m256i r = _mm256_xor_si256(_mm256_xor_si256(ld(partner), _mm256_srli_epi32(y, 1)), mag);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(x_ + k), r);
  }
#endif

  static void temper_run(const std::uint32_t* in, std::uint32_t* out, int n) {
    int i = 0;
#if defined(__AVX2__)
    for (; i + 8 <= n; i += 8) {
      __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i));
      y = _mm256_xor_si256(y, _mm256_srli_epi32(y, 11));
      y = _mm256_xor_si256(y, _mm256_and_si256(_mm256_slli_epi32(y, 7), _mm256_set1_epi32(0x9d2c5680)));
      y = _mm256_xor_si256(y, _mm256_and_si256(_mm256_slli_epi32(y, 15), _mm256_set1_epi32(static_cast<int>(0xefc60000u))));
      y = _mm256_xor_si256(y, _mm256_srli_epi32(y, 18));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), y);
    }
#endif
    for (; i < n; ++i) out[i] = temper(in[i]);
  }

  std::uint32_t x_[kStateWords];
  int next_;
};

}  // namespace kexue::detail
