// SPDX-License-Identifier: MIT
#pragma once
// Philox 4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11) and a vectorised
// Box-Muller transform. Normal number p of stream `seed` is a pure function of (seed, p) (the block and word
// are given at philox_normal_serial). That is what makes the output independent of how the work is split
// among threads.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kexue/core.hpp"
#include "kexue/detail/arch/ops.hpp"
#include "kexue/detail/simd.hpp"

namespace kexue::detail {

constexpr std::uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;  // round multipliers
constexpr std::uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;  // key schedule (golden ratio, sqrt 3)
// The stream's layout unit: 8 consecutive blocks = 32 normals = one "group", stored word-major (normal j of block
// 8 g + l at 32 g + 8 j + l). It is fixed, whatever the register width: a register holds L blocks side by side
// (structure of arrays), i.e. half a group (4 lanes), one (8) or two (16).
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

using U32 = Batch<std::uint32_t>;
using I32 = Batch<std::int32_t>;
constexpr Index kU32Lanes = kLanes<std::uint32_t>;

/// Registers of blocks whose Philox rounds run interleaved: one register's ten rounds are a dependency chain of
/// ~6 cycles per round (multiply latency 3, then shift, blend, xor), so independent registers keep the vector
/// ports busy. Four sets of the four counter words plus temporaries fit AVX2's 16 registers. AVX-512's 32 would
/// hold six, but six measured no faster on Zen4 (16K normals: 12.1 vs 12.3 us) and would make a bulk call 384
/// normals, which does not divide DDPM's 1024-value noise tiles (the remainder then runs one register at a time).
/// At least one group (8 blocks) per call.
constexpr int kPhiloxRegs = std::max<int>(4, int((8 + kU32Lanes - 1) / kU32Lanes));
/// Blocks and normals one call of the interleaved kernel produces (a whole number of groups).
constexpr Index kPhiloxCallBlocks = kPhiloxRegs * kU32Lanes;
static_assert(kPhiloxCallBlocks % kPhiloxBlocksPerGroup == 0, "kexue: Philox calls cover whole groups");

inline U32 philox_iota() {
  alignas(64) std::uint32_t v[kU32Lanes];
  for (Index l = 0; l < kU32Lanes; ++l) v[l] = std::uint32_t(l);
  return U32::load_aligned(v);
}

/// The four words of blocks first_block + L g + lane, for g in [0, G): c[j][g] holds word j. Counter = (block low,
/// block high, 0, 0), key = (seed low, seed high), ten rounds (philox4x32_10 lane by lane).
template <int G>
inline void philox_rounds(std::uint64_t seed, std::uint64_t first_block, U32 (&c)[4][G]) {
  const U32 m0(kPhiloxM0), m1(kPhiloxM1);
  std::uint32_t k0 = std::uint32_t(seed), k1 = std::uint32_t(seed >> 32);
  const std::uint64_t last_block = first_block + std::uint64_t(G * kU32Lanes - 1);
  int round = 0;
  if ((first_block >> 32) == (last_block >> 32)) {
    // No carry into the high word: the counter is (lo + lane, hi, 0, 0) with hi the same in every lane, so the
    // first two rounds partly act on constants. Round 0: the c2 product is 0, hence c0' = hi ^ k0 (uniform),
    // c1' = 0. Round 1: the c0' product is one scalar multiply. Same values as the general rounds.
    const std::uint32_t hi = std::uint32_t(first_block >> 32);
    const U32 base = U32(std::uint32_t(first_block)) + philox_iota();
    const U32 vk1(k1);
    for (int g = 0; g < G; ++g) {  // round 0
      U32 hi0, lo0;
      mulhilo_u32(base + U32(std::uint32_t(g * kU32Lanes)), m0, &hi0, &lo0);
      c[2][g] = hi0 ^ vk1;
      c[3][g] = lo0;
    }
    const std::uint32_t u = hi ^ k0;  // c0 after round 0
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
    const std::uint64_t p = std::uint64_t(kPhiloxM0) * u;  // round 1: its c0 product
    const U32 vk0(k0), h0k1(std::uint32_t(p >> 32) ^ k1), l0 = U32(std::uint32_t(p));
    for (int g = 0; g < G; ++g) {
      U32 hi1, lo1;
      mulhilo_u32(c[2][g], m1, &hi1, &lo1);
      c[0][g] = hi1 ^ vk0;  // c1 is 0 after round 0
      c[1][g] = lo1;
      c[2][g] = c[3][g] ^ h0k1;
      c[3][g] = l0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
    round = 2;
  } else {
    for (int g = 0; g < G; ++g) {
      alignas(64) std::uint32_t lo32[kU32Lanes], hi32[kU32Lanes];
      for (Index l = 0; l < kU32Lanes; ++l) {
        const std::uint64_t b = first_block + std::uint64_t(g * kU32Lanes + l);
        lo32[l] = std::uint32_t(b);
        hi32[l] = std::uint32_t(b >> 32);
      }
      c[0][g] = U32::load_aligned(lo32);
      c[1][g] = U32::load_aligned(hi32);
      c[2][g] = U32(0u);
      c[3][g] = U32(0u);
    }
  }
  for (; round < 10; ++round) {
    const U32 vk0(k0), vk1(k1);
    for (int g = 0; g < G; ++g) {
      U32 hi0, lo0, hi1, lo1;
      mulhilo_u32(c[0][g], m0, &hi0, &lo0);
      mulhilo_u32(c[2][g], m1, &hi1, &lo1);
      c[0][g] = hi1 ^ c[1][g] ^ vk0;
      c[1][g] = lo1;
      c[2][g] = hi0 ^ c[3][g] ^ vk1;
      c[3][g] = lo0;
    }
    k0 += kPhiloxW0;
    k1 += kPhiloxW1;
  }
}

/// Words of the 8 blocks [first_block, first_block + 8): w[j][l] is word j of block first_block + l.
/// Counter = (block low, block high, 0, 0), key = (seed low, seed high).
inline void philox_group_words(std::uint64_t seed, std::uint64_t first_block, std::uint32_t w[4][8]) {
  constexpr int G = int((8 + kU32Lanes - 1) / kU32Lanes);
  U32 c[4][G];
  philox_rounds<G>(seed, first_block, c);
  alignas(64) std::uint32_t lanes[G * kU32Lanes];
  for (int j = 0; j < 4; ++j) {
    for (int g = 0; g < G; ++g) c[j][g].store_aligned(lanes + g * kU32Lanes);
    std::memcpy(w[j], lanes, 8 * sizeof(std::uint32_t));
  }
}

/// The scalar version of philox_group_words (the test oracle for the vector one).
inline void philox_group_words_scalar(std::uint64_t seed, std::uint64_t first_block, std::uint32_t w[4][8]) {
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
// The scalar and vector versions perform the same IEEE operations in the same order (every multiply-add is an
// explicit fma), so the stream is the same whichever path and register width computes it. Where xsimd's
// multiply-add is not fused (x86-64 baseline SSE2), the vector path is not used for Box-Muller.
constexpr std::uint32_t kSqrtHalfBits = 0x3f3504f3u;                              // bits of float sqrt(1/2)
constexpr float kM2Ln2HiF = -2 * 0.693359375f, kM2Ln2LoF = -2 * -2.12194440e-4f;  // -2 ln 2, hi with 9 bits
constexpr float kPiOver2Pow23 = 1.57079632679489661923f / 4194304.0f;             // (pi / 2) 2^-22
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

using F32 = Batch<float>;
static_assert(kLanes<float> == kU32Lanes, "kexue: float and uint32 registers have the same lane count");

/// box_muller_lane on every lane of N registers, operation for operation (every multiply-add an fmadd, which
/// rounds once where the scalar std::fma does: only used where kFusedFma). The integer constants are made once
/// for all N registers: GCC materialises each xsimd integer broadcast with a mov, a vmovd and a vpbroadcastd, ~20
/// instructions per register that a per-register function repeated (measured 12% of a Philox fill with AVX2).
template <int N>
inline void box_muller_regs(const U32* a, const U32* b, F32* n_cos, F32* n_sin) {
  const U32 one(1u), sqrt_half_bits(kSqrtHalfBits), quarter(1u << 29), half(1u << 30), sign(0x80000000u);
  const I32 i24(24), zero(0);
  for (int k = 0; k < N; ++k) {
    // radius
    const U32 bits = reinterpret<std::uint32_t>(xsimd::batch_cast<float>(reinterpret<std::int32_t>((a[k] >> 8) + one)));
    const I32 e = reinterpret<std::int32_t>(bits - sqrt_half_bits) >> 23;  // arithmetic: floor((bits - c) / 2^23)
    const F32 m = reinterpret<float>(bits - reinterpret<std::uint32_t>(e << 23));
    const F32 ef = xsimd::batch_cast<float>(e - i24);
    const F32 x = m - F32(1.0f), z = x * x;
    F32 p(kM2LogP[0]);
    for (int i = 1; i < 9; ++i) p = fmadd(p, x, F32(kM2LogP[i]));
    const F32 y2 = fmadd(x * z, p, z);
    const F32 rr = fmadd(ef, F32(kM2Ln2HiF), fmadd(ef, F32(kM2Ln2LoF), fmadd(x, F32(-2.0f), y2)));
    const F32 r = detail::sqrt_ieee(rr);
    // angle: (b << 2) >> 10 (arithmetic) is the low 22 bits of b >> 8, sign-extended
    const F32 ang = xsimd::batch_cast<float>(reinterpret<std::int32_t>(b[k] << 2) >> 10) * F32(kPiOver2Pow23);
    const U32 q = b[k] + quarter;
    const F32 a2 = ang * ang;
    const F32 ps = fmadd(fmadd(F32(kSinP[0]), a2, F32(kSinP[1])), a2, F32(kSinP[2]));
    const F32 s = fmadd(ang * a2, ps, ang);
    const F32 pc = fmadd(fmadd(F32(kCosP[0]), a2, F32(kCosP[1])), a2, F32(kCosP[2]));
    const F32 c = fmadd(a2 * a2, pc, fmadd(a2, F32(-0.5f), F32(1.0f)));
    // swap where bit 30 of q is set (odd quadrant), tested as the sign of q << 1; the signs are bit 31 of q and
    // of q + 2^30. The selects are done on the bits as int32 lanes (one blend each).
    const auto swap = reinterpret<std::int32_t>(q << 1) < zero;
    const I32 si = reinterpret<std::int32_t>(s), ci = reinterpret<std::int32_t>(c);
    const F32 sin_t = reinterpret<float>(reinterpret<std::uint32_t>(xsimd::select(swap, ci, si)) ^ (q & sign));
    const F32 cos_t = reinterpret<float>(reinterpret<std::uint32_t>(xsimd::select(swap, si, ci)) ^ ((q + half) & sign));
    n_cos[k] = r * cos_t;
    n_sin[k] = r * sin_t;
  }
}

/// N lanes of box_muller_lane: whole registers with box_muller_regs where the vector multiply-adds round as
/// std::fma does (kFusedFma), the scalar lane otherwise.
template <int N>
inline void box_muller_lanes(const std::uint32_t* a, const std::uint32_t* b, float* n_cos, float* n_sin) {
  int l = 0;
  if constexpr (kFusedFma) {
    for (; l + kU32Lanes <= N; l += int(kU32Lanes)) {
      const U32 va = U32::load_unaligned(a + l), vb = U32::load_unaligned(b + l);
      F32 c, s;
      box_muller_regs<1>(&va, &vb, &c, &s);
      c.store_unaligned(n_cos + l);
      s.store_unaligned(n_sin + l);
    }
  }
  for (; l < N; ++l) box_muller_lane(a[l], b[l], n_cos + l, n_sin + l);
}

/// Stores v, the normals of word pair half j (0: cosine of words 0-1, 1: sine, 2, 3: the same for words 2-3) of
/// the L blocks starting bo blocks after a group boundary, at their stream positions relative to out (position
/// 32 (bo / 8) + 8 j + bo % 8 for the first). Up to 8 lanes this is one contiguous store; 16 lanes span two
/// groups, whose halves are 32 positions apart.
inline void store_block_normals(float* out, Index bo, int j, const F32& v) {
  float* p = out + kPhiloxGroup * (bo / kPhiloxBlocksPerGroup) + kPhiloxBlocksPerGroup * j;
  if constexpr (kU32Lanes <= kPhiloxBlocksPerGroup) {
    v.store_unaligned(p + bo % kPhiloxBlocksPerGroup);
  } else if constexpr (kU32Lanes == 2 * kPhiloxBlocksPerGroup) {
    store_halves(p, p + kPhiloxGroup, v);
  } else {
    alignas(64) float lanes[kU32Lanes];
    v.store_aligned(lanes);
    for (Index h = 0; h < kU32Lanes / kPhiloxBlocksPerGroup; ++h)
      std::memcpy(p + kPhiloxGroup * h, lanes + kPhiloxBlocksPerGroup * h, kPhiloxBlocksPerGroup * sizeof(float));
  }
}

/// The 4 G L normals of the blocks [first_block, first_block + G L) (first_block a multiple of 8, G L a multiple
/// of 8), at their stream positions relative to out: G registers of blocks with their Philox rounds interleaved,
/// then Box-Muller straight from the registers.
template <int G>
inline void philox_normal_call(std::uint64_t seed, std::uint64_t first_block, float* out) {
  static_assert((G * kU32Lanes) % kPhiloxBlocksPerGroup == 0, "kexue: Philox calls cover whole groups");
  U32 c[4][G];
  philox_rounds<G>(seed, first_block, c);
  if constexpr (kFusedFma) {
    F32 n[4][G];
    box_muller_regs<G>(c[0], c[1], n[0], n[1]);
    box_muller_regs<G>(c[2], c[3], n[2], n[3]);
    for (int g = 0; g < G; ++g)
      for (int j = 0; j < 4; ++j) store_block_normals(out, g * kU32Lanes, j, n[j][g]);
  } else {
    alignas(64) std::uint32_t w[4][kU32Lanes];
    alignas(64) float n[4][kU32Lanes];
    for (int g = 0; g < G; ++g) {
      for (int j = 0; j < 4; ++j) c[j][g].store_aligned(w[j]);
      box_muller_lanes<int(kU32Lanes)>(w[0], w[1], n[0], n[1]);
      box_muller_lanes<int(kU32Lanes)>(w[2], w[3], n[2], n[3]);
      for (int j = 0; j < 4; ++j) store_block_normals(out, g * kU32Lanes, j, F32::load_aligned(n[j]));
    }
  }
}

/// Normals per philox_normal_call<kPhiloxRegs> (the bulk of a long fill).
constexpr Index kPhiloxCallNormals = 4 * kPhiloxCallBlocks;
/// The smallest whole call: one register of blocks, or one group where a register holds less than 8 blocks
/// (32 normals up to 8 lanes, 64 with 16). Shorter and unaligned pieces are cut from one such call.
constexpr int kPhiloxUnitRegs = int((kPhiloxBlocksPerGroup + kU32Lanes - 1) / kU32Lanes);
constexpr Index kPhiloxUnit = 4 * kPhiloxUnitRegs * kU32Lanes;

/// out[i] = normal number (position + i) of stream seed, i in [0, n). Serial. Position 32 g + 8 j + l is normal j
/// of block 8 g + l (word-major inside a group, so result registers are stored without a transpose); normals 0
/// and 1 are the cosine and sine halves of the Box-Muller pair of words 0, 1, normals 2 and 3 of words 2, 3.
template <class T>
inline void philox_normal_serial(std::uint64_t seed, std::uint64_t position, T* out, Index n) {
  alignas(64) float tmp[kPhiloxUnit];
  Index i = 0;
  while (i < n) {
    const std::uint64_t p = position + std::uint64_t(i);
    const std::uint64_t first_block = p / kPhiloxUnit * std::uint64_t(kPhiloxUnit / 4);
    const Index skip = static_cast<Index>(p % kPhiloxUnit);
    const Index take = std::min<Index>(kPhiloxUnit - skip, n - i);
    if constexpr (std::is_same<T, float>::value) {
      if (skip == 0 && n - i >= kPhiloxCallNormals) {
        philox_normal_call<kPhiloxRegs>(seed, first_block, out + i);
        i += kPhiloxCallNormals;
        continue;
      }
      if (skip == 0 && take == kPhiloxUnit) {
        philox_normal_call<kPhiloxUnitRegs>(seed, first_block, out + i);
        i += take;
        continue;
      }
    }
    philox_normal_call<kPhiloxUnitRegs>(seed, first_block, tmp);
    for (Index k = 0; k < take; ++k) out[i + k] = static_cast<T>(tmp[skip + k]);
    i += take;
  }
}

}  // namespace kexue::detail
