// SPDX-License-Identifier: MIT
#pragma once
// MT19937 with a bulk interface: the same sequence as std::mt19937 (and as PyTorch's CPU generator, which is
// MT19937 seeded the standard way), but the twist of the 624-word state and the tempering of a run of draws
// are done a register of words at a time (4, 8 or 16 words: xsimd integer operations, any width), with the
// scalar word operations for the remainders. std::mt19937 tempers one draw per call, which made it most of the
// cost of a torch.randn-compatible fill.

#include <algorithm>
#include <cstdint>

#include "kexue/core.hpp"
#include "kexue/detail/simd.hpp"

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

  using U32 = Batch<std::uint32_t>;
  static constexpr int kL = int(U32::size);
  static_assert(kL <= kStateWords - kShift, "kexue: a register of words must not reach its own new words");

  // x[k] = x[k + kShift (mod 624)] ^ twisted(x[k] upper bit, x[k + 1] lower bits), for k = 0 .. 623 in order:
  // x[k + 1] is always the old word and x[k + kShift - 624] (k >= 227) is already the new one. A block of kL
  // consecutive k (up to 227) keeps both properties: it reads x[k + kL] before the next block writes it, and
  // the new words it reads are at least 227 positions back.
  void twist() {
    constexpr int kFirst = kStateWords - kShift;  // 227: words whose partner is still old
    // Compile-time loop bounds (GCC 12 otherwise warns that a tail loop could run past the state).
    constexpr int kEnd1 = kFirst / kL * kL, kEnd2 = kFirst + (kStateWords - 1 - kFirst) / kL * kL;
    for (int k = 0; k < kEnd1; k += kL) twist_vec(k, k + kShift);
    for (int k = kEnd1; k < kFirst; ++k) twist1(k, k + kShift);
    for (int k = kFirst; k < kEnd2; k += kL) twist_vec(k, k - kFirst);
    for (int k = kEnd2; k < kStateWords - 1; ++k) twist1(k, k - kFirst);
    const std::uint32_t y = (x_[kStateWords - 1] & kUpper) | (x_[0] & kLower);
    x_[kStateWords - 1] = x_[kShift - 1] ^ (y >> 1) ^ ((y & 1u) ? kMatrixA : 0u);
    next_ = 0;
  }

  void twist1(int k, int partner) {
    const std::uint32_t y = (x_[k] & kUpper) | (x_[k + 1] & kLower);
    x_[k] = x_[partner] ^ (y >> 1) ^ ((y & 1u) ? kMatrixA : 0u);
  }

  void twist_vec(int k, int partner) {
    const U32 y = (U32::load_unaligned(x_ + k) & U32(kUpper)) | (U32::load_unaligned(x_ + k + 1) & U32(kLower));
    const U32 mag = (U32(0u) - (y & U32(1u))) & U32(kMatrixA);  // kMatrixA where y is odd: 0 - 1 is all ones
    (U32::load_unaligned(x_ + partner) ^ (y >> 1) ^ mag).store_unaligned(x_ + k);
  }

  static void temper_run(const std::uint32_t* in, std::uint32_t* out, int n) {
    int i = 0;
    const U32 b(0x9d2c5680u), c(0xefc60000u);
    for (; i + kL <= n; i += kL) {
      U32 y = U32::load_unaligned(in + i);
      y ^= y >> 11;
      y ^= (y << 7) & b;
      y ^= (y << 15) & c;
      y ^= y >> 18;
      y.store_unaligned(out + i);
    }
    for (; i < n; ++i) out[i] = temper(in[i]);
  }

  std::uint32_t x_[kStateWords];
  int next_;
};

}  // namespace kexue::detail
