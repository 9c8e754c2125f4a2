// SPDX-License-Identifier: MIT
#pragma once
// Philox 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) and a vectorised
// Box-Muller transform. Normal number p of stream `seed` is a pure function of (seed, p) (the block and word
// are given at philox_normal_group). That is what makes the output independent of how the work is split
// among threads.

#include <cmath>
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kexue/core.hpp"
#include "kexue/detail/simd.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

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

#if defined(__AVX2__)
// mulhilo of 8 lanes: vpmuludq multiplies the even 32-bit lanes into 64-bit products, so the odd lanes are
// shifted down, multiplied separately, and the high and low halves are blended back into place.
inline void philox_mulhilo8(__m256i a, __m256i m, __m256i* hi, __m256i* lo) {
  const __m256i pe = _mm256_mul_epu32(a, m);
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
  *lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
}

// G groups of 8 blocks at once: one group's rounds form a dependency chain of ~6 cycles per round
// (multiply latency 3, then shift, blend, xor), so two interleaved groups keep the vector ports busy.
template <int G>
inline void philox_groups_words_avx2(std::uint64_t seed, std::uint64_t first_block, std::uint32_t (*w)[4][8]) {
  __m256i c0[G], c1[G], c2[G], c3[G];
  const std::uint64_t last_block = first_block + std::uint64_t(8 * G - 1);
  if ((first_block >> 32) == (last_block >> 32)) {  // no carry into the high word: counters by vector adds
    const __m256i base = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(std::uint32_t(first_block))),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int g = 0; g < G; ++g) {
      c0[g] = _mm256_add_epi32(base, _mm256_set1_epi32(8 * g));
      c1[g] = _mm256_set1_epi32(static_cast<int>(std::uint32_t(first_block >> 32)));
      c2[g] = _mm256_setzero_si256();
      c3[g] = _mm256_setzero_si256();
    }
  } else {
    for (int g = 0; g < G; ++g) {
      alignas(32) std::uint32_t lo32[8], hi32[8];
      for (int l = 0; l < 8; ++l) {
        const std::uint64_t b = first_block + std::uint64_t(8 * g + l);
        lo32[l] = std::uint32_t(b);
        hi32[l] = std::uint32_t(b >> 32);
      }
      c0[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(lo32));
      c1[g] = _mm256_load_si256(reinterpret_cast<const __m256i*>(hi32));
      c2[g] = _mm256_setzero_si256();
      c3[g] = _mm256_setzero_si256();
    }
  }
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0)), m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  std::uint32_t k0 = std::uint32_t(seed), k1 = std::uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m256i vk0 = _mm256_set1_epi32(static_cast<int>(k0)), vk1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int g = 0; g < G; ++g) {
      __m256i hi0, lo0, hi1, lo1;
      philox_mulhilo8(c0[g], m0, &hi0, &lo0);
      philox_mulhilo8(c2[g], m1, &hi1, &lo1);
      c0[g] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[g]), vk0);
      c1[g] = lo1;
      c2[g] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[g]), vk1);
      c3[g] = lo0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
  for (int g = 0; g < G; ++g) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[g][0]), c0[g]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[g][1]), c1[g]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[g][2]), c2[g]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w[g][3]), c3[g]);
  }
}

inline void philox_group_words_avx2(std::uint64_t seed, std::uint64_t first_block, std::uint32_t w[4][8]) {
  philox_groups_words_avx2<1>(seed, first_block, reinterpret_cast<std::uint32_t(*)[4][8]>(w));
}
#endif

/// Words of the 8 blocks [first_block, first_block + 8): w[j][l] is word j of block first_block + l.
/// Counter = (block low, block high, 0, 0), key = (seed low, seed high).
inline void philox_group_words(std::uint64_t seed, std::uint64_t first_block, std::uint32_t w[4][8]) {
#if defined(__AVX2__)
  philox_group_words_avx2(seed, first_block, w);
}

/// The portable version of philox_group_words (also the test oracle for the AVX2 one).
inline void philox_group_words_scalar(std::uint64_t seed, std::uint64_t first_block, std::uint32_t w[4][8]) {
#endif
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

// Box-Muller on 24-bit uniforms, with a log and a sincos specialised to them (the general xsimd ones spend
// most of their time on range reduction and special cases that cannot occur here):
// - radius: u1 = k1 2^-24 with k1 = (a >> 8) + 1 in [1, 2^24], so u1 is in (0, 1], log never sees 0 and the
//   largest radius is sqrt(-2 ln 2^-24) = 5.77. ln u1 = (e - 24) ln 2 + ln m, m in [sqrt(1/2), sqrt(2)), with
//   Cephes' logf polynomial for ln(1 + x) (~1 ulp).
// - angle: theta = 2 pi k2 2^-24 with k2 = b >> 8. The quadrant n = round(k2 / 2^22) and the remainder
//   f = k2 - n 2^22 are exact integers, so the reduced angle a = f (pi / 2) 2^-22 is in [-pi/4, pi/4] with a
//   single rounding, and Cephes' sinf/cosf polynomials apply directly (~1 ulp).
// The scalar and AVX2 versions perform the same IEEE operations in the same order (every multiply-add is an
// explicit fma), so the stream is the same whichever path computes it.
constexpr float kSqrt2F = 1.41421356237309504880f;
constexpr float kLn2HiF = 0.693359375f, kLn2LoF = -2.12194440e-4f;  // ln 2 = hi + lo, hi with 9 bits
constexpr float kPiOver2Pow23 = 1.57079632679489661923f / 4194304.0f;  // (pi / 2) 2^-22
constexpr float kLogP[9] = {7.0376836292E-2f,  -1.1514610310E-1f, 1.1676998740E-1f,
                            -1.2420140846E-1f, 1.4249322787E-1f,  -1.6668057665E-1f,
                            2.0000714765E-1f,  -2.4999993993E-1f, 3.3333331174E-1f};
constexpr float kSinP[3] = {-1.9515295891E-4f, 8.3321608736E-3f, -1.6666654611E-1f};
constexpr float kCosP[3] = {2.443315711809948E-005f, -1.388731625493765E-003f, 4.166664568298827E-002f};

/// One lane: n_cos = r cos(theta), n_sin = r sin(theta) from the words a (radius) and b (angle).
inline void box_muller_lane(std::uint32_t a, std::uint32_t b, float* n_cos, float* n_sin) {
  // radius
  const float u1 = static_cast<float>(static_cast<std::int32_t>((a >> 8) + 1u));  // exact, in [1, 2^24]
  std::uint32_t bits;
  std::memcpy(&bits, &u1, sizeof bits);
  std::int32_t e = static_cast<std::int32_t>(bits >> 23) - 127 - 24;
  const std::uint32_t mbits = (bits & 0x007fffffu) | 0x3f800000u;
  float m;
  std::memcpy(&m, &mbits, sizeof m);
  const bool big = m > kSqrt2F;
  m = big ? m * 0.5f : m;
  e += big ? 1 : 0;
  const float x = m - 1.0f, z = x * x, ef = static_cast<float>(e);
  float p = kLogP[0];
  for (int i = 1; i < 9; ++i) p = std::fma(p, x, kLogP[i]);
  const float y = std::fma(x * z, p, z * -0.5f);
  const float ln_u1 = std::fma(ef, kLn2HiF, std::fma(ef, kLn2LoF, x + y));
  const float rr = ln_u1 * -2.0f;
  const float r = std::sqrt(rr > 0.0f ? rr : 0.0f);  // as _mm256_max_ps(rr, 0): +0 for u1 = 1, not -0
  // angle
  const std::int32_t k2 = static_cast<std::int32_t>(b >> 8);
  const std::int32_t n = (k2 + (1 << 21)) >> 22;
  const float ang = static_cast<float>(k2 - (n << 22)) * kPiOver2Pow23;
  const float a2 = ang * ang;
  const float ps = std::fma(std::fma(kSinP[0], a2, kSinP[1]), a2, kSinP[2]);
  const float s = std::fma(ang * a2, ps, ang);
  const float pc = std::fma(std::fma(kCosP[0], a2, kCosP[1]), a2, kCosP[2]);
  const float c = std::fma(a2 * a2, pc, std::fma(a2, -0.5f, 1.0f));
  const bool swap = (n & 1) != 0;
  float sin_t = swap ? c : s, cos_t = swap ? s : c;
  if (n & 2) sin_t = -sin_t;
  if ((n + 1) & 2) cos_t = -cos_t;
  *n_cos = r * cos_t;
  *n_sin = r * sin_t;
}

#if defined(__AVX2__) && defined(__FMA__)
/// K x 8 lanes of box_muller_lane, operation for operation: pair k reads a[k][0..8), b[k][0..8) and writes
/// n_cos[k][0..8), n_sin[k][0..8). K independent registers are interleaved because each chain (a 9-term
/// polynomial, a square root) is long and latency-bound.
template <int K>
inline void box_muller8(const std::uint32_t* const* pa, const std::uint32_t* const* pb, float* const* n_cos,
                        float* const* n_sin) {
  __m256 r[K], ang[K];
  __m256i nq[K];
  for (int k = 0; k < K; ++k) {
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(pa[k]));
    const __m256 u1 = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_srli_epi32(a, 8), _mm256_set1_epi32(1)));
    const __m256i bits = _mm256_castps_si256(u1);
    __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127 + 24));
    __m256 m = _mm256_castsi256_ps(
        _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f800000)));
    const __m256 big = _mm256_cmp_ps(m, _mm256_set1_ps(kSqrt2F), _CMP_GT_OQ);
    m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
    e = _mm256_sub_epi32(e, _mm256_castps_si256(big));  // big lanes are all ones = -1
    const __m256 x = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
    const __m256 z = _mm256_mul_ps(x, x);
    const __m256 ef = _mm256_cvtepi32_ps(e);
    __m256 p = _mm256_set1_ps(kLogP[0]);
    for (int i = 1; i < 9; ++i) p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(kLogP[i]));
    const __m256 y = _mm256_fmadd_ps(_mm256_mul_ps(x, z), p, _mm256_mul_ps(z, _mm256_set1_ps(-0.5f)));
    const __m256 ln_u1 = _mm256_fmadd_ps(ef, _mm256_set1_ps(kLn2HiF),
                                         _mm256_fmadd_ps(ef, _mm256_set1_ps(kLn2LoF), _mm256_add_ps(x, y)));
    r[k] = _mm256_sqrt_ps(_mm256_max_ps(_mm256_mul_ps(ln_u1, _mm256_set1_ps(-2.0f)), _mm256_setzero_ps()));
    const __m256i k2 = _mm256_srli_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(pb[k])), 8);
    nq[k] = _mm256_srai_epi32(_mm256_add_epi32(k2, _mm256_set1_epi32(1 << 21)), 22);
    ang[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(k2, _mm256_slli_epi32(nq[k], 22))),
                           _mm256_set1_ps(kPiOver2Pow23));
  }
  for (int k = 0; k < K; ++k) {
    const __m256 a2 = _mm256_mul_ps(ang[k], ang[k]);
    const __m256 ps = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(kSinP[0]), a2, _mm256_set1_ps(kSinP[1])), a2,
                                      _mm256_set1_ps(kSinP[2]));
    const __m256 s = _mm256_fmadd_ps(_mm256_mul_ps(ang[k], a2), ps, ang[k]);
    const __m256 pc = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(kCosP[0]), a2, _mm256_set1_ps(kCosP[1])), a2,
                                      _mm256_set1_ps(kCosP[2]));
    const __m256 c = _mm256_fmadd_ps(_mm256_mul_ps(a2, a2), pc,
                                     _mm256_fmadd_ps(a2, _mm256_set1_ps(-0.5f), _mm256_set1_ps(1.0f)));
    const __m256i n = nq[k];
    const __m256 swap = _mm256_castsi256_ps(_mm256_slli_epi32(n, 31));  // sign bit set where n is odd
    __m256 sin_t = _mm256_blendv_ps(s, c, swap), cos_t = _mm256_blendv_ps(c, s, swap);
    const __m256 sin_sign = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(n, _mm256_set1_epi32(2)), 30));
    const __m256 cos_sign = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(n, _mm256_set1_epi32(1)), _mm256_set1_epi32(2)), 30));
    sin_t = _mm256_xor_ps(sin_t, sin_sign);
    cos_t = _mm256_xor_ps(cos_t, cos_sign);
    _mm256_storeu_ps(n_cos[k], _mm256_mul_ps(r[k], cos_t));
    _mm256_storeu_ps(n_sin[k], _mm256_mul_ps(r[k], sin_t));
  }
}
#endif

/// N lanes: the AVX2 kernel on whole registers, the scalar lane otherwise.
template <int N>
inline void box_muller_lanes(const std::uint32_t* a, const std::uint32_t* b, float* n_cos, float* n_sin) {
  int l = 0;
#if defined(__AVX2__) && defined(__FMA__)
  for (; l + 8 <= N; l += 8) {
    const std::uint32_t* pa[1] = {a + l};
    const std::uint32_t* pb[1] = {b + l};
    float* pc[1] = {n_cos + l};
    float* ps[1] = {n_sin + l};
    box_muller8<1>(pa, pb, pc, ps);
  }
#endif
  for (; l < N; ++l) box_muller_lane(a[l], b[l], n_cos + l, n_sin + l);
}

/// Normals at positions [32 g, 32 g + 32) of stream seed. Position 32 g + 8 j + l is normal j of block
/// 8 g + l (word-major inside a group, so the four result registers are stored without a transpose);
/// normals 0 and 1 are the cosine and sine halves of the Box-Muller pair (words 0, 1), normals 2 and 3 of
/// the pair (words 2, 3).
inline void philox_normal_group(std::uint64_t seed, std::uint64_t g, float* out) {
  alignas(32) std::uint32_t w[4][8];
  philox_group_words(seed, g * kPhiloxBlocksPerGroup, w);
  box_muller_lanes<8>(w[0], w[1], out, out + 8);
  box_muller_lanes<8>(w[2], w[3], out + 16, out + 24);
}

/// Four consecutive groups g .. g + 3 (128 normals) with the work of the groups interleaved where AVX2 is
/// available (Philox rounds and Box-Muller chains are latency-bound one register at a time).
constexpr Index kPhiloxQuad = 4 * kPhiloxGroup;
inline void philox_normal_group_quad(std::uint64_t seed, std::uint64_t g, float* out) {
#if defined(__AVX2__) && defined(__FMA__)
  alignas(32) std::uint32_t w[4][4][8];
  philox_groups_words_avx2<4>(seed, g * kPhiloxBlocksPerGroup, w);
  for (int h = 0; h < 2; ++h) {  // two groups = four Box-Muller registers at a time
    const std::uint32_t* pa[4];
    const std::uint32_t* pb[4];
    float* pc[4];
    float* ps[4];
    for (int q = 0; q < 2; ++q) {
      const int k = 2 * h + q;
      float* o = out + 32 * k;
      pa[2 * q] = w[k][0];
      pb[2 * q] = w[k][1];
      pc[2 * q] = o;
      ps[2 * q] = o + 8;
      pa[2 * q + 1] = w[k][2];
      pb[2 * q + 1] = w[k][3];
      pc[2 * q + 1] = o + 16;
      ps[2 * q + 1] = o + 24;
    }
    box_muller8<4>(pa, pb, pc, ps);
  }
#else
  for (int k = 0; k < 4; ++k) philox_normal_group(seed, g + std::uint64_t(k), out + k * kPhiloxGroup);
#endif
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
      if (skip == 0 && n - i >= kPhiloxQuad) {
        philox_normal_group_quad(seed, g, out + i);
        i += kPhiloxQuad;
        continue;
      }
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
