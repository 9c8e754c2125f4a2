// SPDX-License-Identifier: MIT
#pragma once
// Philox 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) and a vectorised
// Box-Muller transform. Normal number p of stream `seed` is a pure function of (seed, p): block p / 4 of
// the counter sequence, word p % 4. That is what makes the output independent of how the work is split
// among threads.

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kexue/core.hpp"
#include "kexue/detail/simd.hpp"

namespace kexue::detail {

constexpr std::uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;  // round multipliers
constexpr std::uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;  // key schedule (golden ratio, sqrt 3)
// Eight counters are processed side by side in structure-of-arrays form so that the compiler turns the
// 32x32->64 multiplies into vpmuludq over a whole register; 8 blocks = 32 normals = one "group".
constexpr Index kPhiloxBlocksPerGroup = 8;
constexpr Index kPhiloxGroup = 4 * kPhiloxBlocksPerGroup;

/// The 4 words of Philox4x32-10 for counter ctr and key key (scalar; used for known-answer tests).
inline void philox4x32_10(const std::uint32_t ctr[4], const std::uint32_t key[2], std::uint32_t out[4]) {
  std::uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = std::uint64_t(kPhiloxM0) * c0, p1 = std::uint64_t(kPhiloxM1) * c2;
    const std::uint32_t n0 = std::uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = std::uint32_t(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = std::uint32_t(p1);
    c2 = n2;
    c3 = std::uint32_t(p0);
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

/// Words of the 8 blocks [first_block, first_block + 8): w[j][l] is word j of block first_block + l.
/// Counter = (block low, block high, 0, 0), key = (seed low, seed high).
inline void philox_group_words(std::uint64_t seed, std::uint64_t first_block, std::uint32_t w[4][8]) {
  std::uint32_t c0[8], c1[8], c2[8], c3[8];
  for (int l = 0; l < 8; ++l) {
    const std::uint64_t b = first_block + std::uint64_t(l);
    c0[l] = std::uint32_t(b);
    c1[l] = std::uint32_t(b >> 32);
    c2[l] = 0;
    c3[l] = 0;
  }
  std::uint32_t k0 = std::uint32_t(seed), k1 = std::uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    for (int l = 0; l < 8; ++l) {
      const std::uint64_t p0 = std::uint64_t(kPhiloxM0) * c0[l], p1 = std::uint64_t(kPhiloxM1) * c2[l];
      const std::uint32_t n0 = std::uint32_t(p1 >> 32) ^ c1[l] ^ k0, n2 = std::uint32_t(p0 >> 32) ^ c3[l] ^ k1;
      c0[l] = n0;
      c1[l] = std::uint32_t(p1);
      c2[l] = n2;
      c3[l] = std::uint32_t(p0);
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (int l = 0; l < 8; ++l) {
    w[0][l] = c0[l];
    w[1][l] = c1[l];
    w[2][l] = c2[l];
    w[3][l] = c3[l];
  }
}

// 24-bit uniforms: u in (0, 1] for the radius (log never sees 0, so no -inf and no NaN), and [0, 1) for the
// angle. 24 bits is what a float holds exactly; the largest normal is sqrt(-2 ln 2^-24) = 5.77.
constexpr float kTwoPow24Inv = 1.0f / 16777216.0f;
constexpr float kTwoPiF = 6.28318530717958647692f;

template <int N>
inline void box_muller_lanes(const std::uint32_t* a, const std::uint32_t* b, float* n_cos, float* n_sin) {
  // Integer-to-float conversion in plain loops (vectorised by the compiler), the transcendental part with
  // xsimd.
  alignas(32) float u1[N], u2[N];
  for (int l = 0; l < N; ++l) {
    u1[l] = static_cast<float>(static_cast<std::int32_t>((a[l] >> 8) + 1u)) * kTwoPow24Inv;
    u2[l] = static_cast<float>(static_cast<std::int32_t>(b[l] >> 8)) * kTwoPow24Inv;
  }
  constexpr int L = static_cast<int>(kLanes<float>);
  int l = 0;
  for (; l + L <= N; l += L) {
    const Batch<float> r = xsimd::sqrt(Batch<float>(-2.0f) * xsimd::log(load(u1 + l)));
    const auto sc = xsimd::sincos(Batch<float>(kTwoPiF) * load(u2 + l));
    store(n_cos + l, r * sc.second);
    store(n_sin + l, r * sc.first);
  }
  for (; l < N; ++l) {
    const float r = std::sqrt(-2.0f * std::log(u1[l]));
    n_cos[l] = r * std::cos(kTwoPiF * u2[l]);
    n_sin[l] = r * std::sin(kTwoPiF * u2[l]);
  }
}

/// Normals at positions [32 g, 32 g + 32) of stream seed, in order.
inline void philox_normal_group(std::uint64_t seed, std::uint64_t g, float* out) {
  alignas(32) std::uint32_t w[4][8];
  philox_group_words(seed, g * kPhiloxBlocksPerGroup, w);
  alignas(32) float n[4][8];
  box_muller_lanes<8>(w[0], w[1], n[0], n[1]);
  box_muller_lanes<8>(w[2], w[3], n[2], n[3]);
  for (int l = 0; l < 8; ++l)
    for (int j = 0; j < 4; ++j) out[4 * l + j] = n[j][l];
}

/// out[i] = normal number (position + i) of stream seed, i in [0, n). Serial.
template <class T>
inline void philox_normal_serial(std::uint64_t seed, std::uint64_t position, T* out, Index n) {
  alignas(32) float tmp[kPhiloxGroup];
  Index i = 0;
  while (i < n) {
    const std::uint64_t p = position + std::uint64_t(i);
    const std::uint64_t g = p / kPhiloxGroup;
    const Index skip = static_cast<Index>(p % kPhiloxGroup);
    const Index take = std::min<Index>(kPhiloxGroup - skip, n - i);
    if constexpr (std::is_same<T, float>::value) {
      if (skip == 0 && take == kPhiloxGroup) {
        philox_normal_group(seed, g, out + i);
        i += take;
        continue;
      }
    }
    philox_normal_group(seed, g, tmp);
    for (Index k = 0; k < take; ++k) out[i + k] = static_cast<T>(tmp[skip + k]);
    i += take;
  }
}

}  // namespace kexue::detail
