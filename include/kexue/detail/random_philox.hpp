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
// shifted down and multiplied separately and the two high halves are blended back into place; the low
// halves are one vpmulld (as fast as vpmuludq on this machine, and cheaper than a shift and a blend).
inline void philox_mulhilo8(__m256i a, __m256i m, __m256i* hi, __m256i* lo) {
  const __m256i pe = _mm256_mul_epu32(a, m);
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
  *lo = _mm256_mullo_epi32(a, m);
}

// One Philox round on G groups of 8 blocks.
template <int G>
inline void philox_round_avx2(__m256i* c0, __m256i* c1, __m256i* c2, __m256i* c3, __m256i m0, __m256i m1,
                              std::uint32_t k0, std::uint32_t k1) {
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
}

// G groups of 8 blocks at once: one group's rounds form a dependency chain of ~6 cycles per round
// (multiply latency 3, then shift, blend, xor), so four interleaved groups keep the vector ports busy.
template <int G>
inline void philox_groups_words_avx2(std::uint64_t seed, std::uint64_t first_block, std::uint32_t (*w)[4][8]) {
  __m256i c0[G], c1[G], c2[G], c3[G];
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kPhiloxM0)), m1 = _mm256_set1_epi32(static_cast<int>(kPhiloxM1));
  std::uint32_t k0 = std::uint32_t(seed), k1 = std::uint32_t(seed >> 32);
  const std::uint64_t last_block = first_block + std::uint64_t(8 * G - 1);
  int round = 0;
  if ((first_block >> 32) == (last_block >> 32)) {
    // No carry into the high word: the counter is (lo + lane, hi, 0, 0) with hi the same in every lane, so the
    // first two rounds partly act on constants. Round 0: the c2 product is 0, hence c0' = hi ^ k0 (uniform),
    // c1' = 0. Round 1: the c0' product is one scalar multiply. Same values as the general rounds.
    const std::uint32_t hi = std::uint32_t(first_block >> 32);
    const __m256i base = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(std::uint32_t(first_block))),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i vk1 = _mm256_set1_epi32(static_cast<int>(k1));
    for (int g = 0; g < G; ++g) {  // round 0
      __m256i hi0, lo0;
      philox_mulhilo8(_mm256_add_epi32(base, _mm256_set1_epi32(8 * g)), m0, &hi0, &lo0);
      c2[g] = _mm256_xor_si256(hi0, vk1);
      c3[g] = lo0;
    }
    const std::uint32_t u = hi ^ k0;  // c0 after round 0
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
    const std::uint64_t p = std::uint64_t(kPhiloxM0) * u;  // round 1: its c0 product
    const __m256i vk0 = _mm256_set1_epi32(static_cast<int>(k0));
    const __m256i h0k1 = _mm256_set1_epi32(static_cast<int>(std::uint32_t(p >> 32) ^ k1));
    const __m256i l0 = _mm256_set1_epi32(static_cast<int>(std::uint32_t(p)));
    for (int g = 0; g < G; ++g) {
      __m256i hi1, lo1;
      philox_mulhilo8(c2[g], m1, &hi1, &lo1);
      c0[g] = _mm256_xor_si256(hi1, vk0);  // c1 is 0 after round 0
      c1[g] = lo1;
      c2[g] = _mm256_xor_si256(c3[g], h0k1);
      c3[g] = l0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
    round = 2;
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
  for (; round < 10; ++round) {
    philox_round_avx2<G>(c0, c1, c2, c3, m0, m1, k0, k1);
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
//   largest radius is sqrt(-2 ln 2^-24) = 5.77. u1 = 2^e m with m in [sqrt(1/2), sqrt(2)), found with integer
//   arithmetic on the bits of u1 (subtracting the bits of sqrt(1/2) makes the exponent field e); ln(1 + x),
//   x = m - 1, is Cephes' logf polynomial (~1 ulp). Every coefficient is pre-multiplied by -2 (exact, a power
//   of two), so rr = -2 ln u1 comes out of the same roundings as -2 * ln u1 would, one multiply cheaper. rr is
//   +0 for u1 = 1 and positive otherwise (e <= 0, and for e = 0, x <= 0), so sqrt needs no guard.
// - angle: theta = 2 pi k2 2^-24 with k2 = b >> 8. The nearest quadrant n and the remainder f = k2 - n 2^22 are
//   exact integers: f is the low 22 bits of k2 sign-extended, and n mod 4 is bits 30-31 of b + 2^29. So the
//   reduced angle a = f (pi / 2) 2^-22 is in [-pi/4, pi/4] with a single rounding, and Cephes' sinf/cosf
//   polynomials apply directly (~1 ulp).
// The scalar and AVX2 versions perform the same IEEE operations in the same order (every multiply-add is an
// explicit fma), so the stream is the same whichever path computes it.
constexpr std::uint32_t kSqrtHalfBits = 0x3f3504f3u;  // bits of float sqrt(1/2)
constexpr float kM2Ln2HiF = -2 * 0.693359375f, kM2Ln2LoF = -2 * -2.12194440e-4f;  // -2 ln 2, hi with 9 bits
constexpr float kPiOver2Pow23 = 1.57079632679489661923f / 4194304.0f;  // (pi / 2) 2^-22
constexpr float kM2LogP[9] = {-2 * 7.0376836292E-2f,  -2 * -1.1514610310E-1f, -2 * 1.1676998740E-1f,
                              -2 * -1.2420140846E-1f, -2 * 1.4249322787E-1f,  -2 * -1.6668057665E-1f,
                              -2 * 2.0000714765E-1f,  -2 * -2.4999993993E-1f, -2 * 3.3333331174E-1f};
constexpr float kSinP[3] = {-1.9515295891E-4f, 8.3321608736E-3f, -1.6666654611E-1f};
constexpr float kCosP[3] = {2.443315711809948E-005f, -1.388731625493765E-003f, 4.166664568298827E-002f};

/// One lane: n_cos = r cos(theta), n_sin = r sin(theta) from the words a (radius) and b (angle).
inline void box_muller_lane(std::uint32_t a, std::uint32_t b, float* n_cos, float* n_sin) {
  // radius
  const float u1 = static_cast<float>(static_cast<std::int32_t>((a >> 8) + 1u));  // exact, in [1, 2^24]
  std::uint32_t bits;
  std::memcpy(&bits, &u1, sizeof bits);
  // e = floor((bits - kSqrtHalfBits) / 2^23) in [-24, 0], with unsigned arithmetic only
  const std::int32_t e = static_cast<std::int32_t>((bits + (0x40000000u - kSqrtHalfBits)) >> 23) - 128;
  const std::uint32_t mbits = bits - (static_cast<std::uint32_t>(e) << 23);  // modulo 2^32: bits + |e| 2^23
  float m;
  std::memcpy(&m, &mbits, sizeof m);
  const float x = m - 1.0f, z = x * x, ef = static_cast<float>(e - 24);
  float p = kM2LogP[0];
  for (int i = 1; i < 9; ++i) p = std::fma(p, x, kM2LogP[i]);
  const float y2 = std::fma(x * z, p, z);
  const float rr = std::fma(ef, kM2Ln2HiF, std::fma(ef, kM2Ln2LoF, std::fma(x, -2.0f, y2)));
  const float r = std::sqrt(rr);
  // angle
  const std::int32_t k = static_cast<std::int32_t>((b >> 8) & 0x3fffffu);
  const std::int32_t f = k >= (1 << 21) ? k - (1 << 22) : k;
  const float ang = static_cast<float>(f) * kPiOver2Pow23;
  const std::uint32_t q = b + (1u << 29);  // bit 30: odd quadrant, bit 31: quadrant 2 or 3
  const float a2 = ang * ang;
  const float ps = std::fma(std::fma(kSinP[0], a2, kSinP[1]), a2, kSinP[2]);
  const float s = std::fma(ang * a2, ps, ang);
  const float pc = std::fma(std::fma(kCosP[0], a2, kCosP[1]), a2, kCosP[2]);
  const float c = std::fma(a2 * a2, pc, std::fma(a2, -0.5f, 1.0f));
  const bool swap = (q >> 30) & 1u;
  float sin_t = swap ? c : s, cos_t = swap ? s : c;
  if (q >> 31) sin_t = -sin_t;
  if ((q + (1u << 30)) >> 31) cos_t = -cos_t;
  *n_cos = r * cos_t;
  *n_sin = r * sin_t;
}

#if defined(__AVX2__) && defined(__FMA__)
/// 8 lanes of box_muller_lane, operation for operation, on words held in registers.
inline void box_muller8(__m256i a, __m256i b, float* n_cos, float* n_sin) {
  // radius
  const __m256i bits =
      _mm256_castps_si256(_mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_srli_epi32(a, 8), _mm256_set1_epi32(1))));
  const __m256i e = _mm256_srai_epi32(_mm256_sub_epi32(bits, _mm256_set1_epi32(static_cast<int>(kSqrtHalfBits))), 23);
  const __m256 m = _mm256_castsi256_ps(_mm256_sub_epi32(bits, _mm256_slli_epi32(e, 23)));
  const __m256 ef = _mm256_cvtepi32_ps(_mm256_sub_epi32(e, _mm256_set1_epi32(24)));
  const __m256 x = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 p = _mm256_set1_ps(kM2LogP[0]);
  for (int i = 1; i < 9; ++i) p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(kM2LogP[i]));
  const __m256 y2 = _mm256_fmadd_ps(_mm256_mul_ps(x, z), p, z);
  const __m256 rr = _mm256_fmadd_ps(
      ef, _mm256_set1_ps(kM2Ln2HiF),
      _mm256_fmadd_ps(ef, _mm256_set1_ps(kM2Ln2LoF), _mm256_fmadd_ps(x, _mm256_set1_ps(-2.0f), y2)));
  const __m256 r = _mm256_sqrt_ps(rr);
  // angle: (b << 2) >> 10 (arithmetic) is the low 22 bits of b >> 8, sign-extended
  const __m256 ang =
      _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(b, 2), 10)), _mm256_set1_ps(kPiOver2Pow23));
  const __m256i q = _mm256_add_epi32(b, _mm256_set1_epi32(1 << 29));
  const __m256 a2 = _mm256_mul_ps(ang, ang);
  const __m256 ps = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(kSinP[0]), a2, _mm256_set1_ps(kSinP[1])), a2,
                                    _mm256_set1_ps(kSinP[2]));
  const __m256 s = _mm256_fmadd_ps(_mm256_mul_ps(ang, a2), ps, ang);
  const __m256 pc = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(kCosP[0]), a2, _mm256_set1_ps(kCosP[1])), a2,
                                    _mm256_set1_ps(kCosP[2]));
  const __m256 c = _mm256_fmadd_ps(_mm256_mul_ps(a2, a2), pc,
                                   _mm256_fmadd_ps(a2, _mm256_set1_ps(-0.5f), _mm256_set1_ps(1.0f)));
  const __m256 swap = _mm256_castsi256_ps(_mm256_slli_epi32(q, 1));  // sign bit = bit 30 of q
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int>(0x80000000u)));
  const __m256 sin_sign = _mm256_and_ps(_mm256_castsi256_ps(q), sign);
  const __m256 cos_sign = _mm256_and_ps(_mm256_castsi256_ps(_mm256_add_epi32(q, _mm256_set1_epi32(1 << 30))), sign);
  const __m256 sin_t = _mm256_xor_ps(_mm256_blendv_ps(s, c, swap), sin_sign);
  const __m256 cos_t = _mm256_xor_ps(_mm256_blendv_ps(c, s, swap), cos_sign);
  _mm256_storeu_ps(n_cos, _mm256_mul_ps(r, cos_t));
  _mm256_storeu_ps(n_sin, _mm256_mul_ps(r, sin_t));
}
#endif

/// N lanes: the AVX2 kernel on whole registers, the scalar lane otherwise.
template <int N>
inline void box_muller_lanes(const std::uint32_t* a, const std::uint32_t* b, float* n_cos, float* n_sin) {
  int l = 0;
#if defined(__AVX2__) && defined(__FMA__)
  for (; l + 8 <= N; l += 8)
    box_muller8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + l)),
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + l)), n_cos + l, n_sin + l);
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

/// Four consecutive groups g .. g + 3 (128 normals) with the Philox rounds of the groups interleaved where
/// AVX2 is available (one group's rounds are a latency-bound chain).
constexpr Index kPhiloxQuad = 4 * kPhiloxGroup;
inline void philox_normal_group_quad(std::uint64_t seed, std::uint64_t g, float* out) {
#if defined(__AVX2__) && defined(__FMA__)
  alignas(32) std::uint32_t w[4][4][8];
  philox_groups_words_avx2<4>(seed, g * kPhiloxBlocksPerGroup, w);
  const auto word = [&](int k, int j) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(w[k][j])); };
  for (int k = 0; k < 4; ++k) {
    float* o = out + kPhiloxGroup * k;
    box_muller8(word(k, 0), word(k, 1), o, o + 8);
    box_muller8(word(k, 2), word(k, 3), o + 16, o + 24);
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
