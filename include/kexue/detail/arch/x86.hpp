// SPDX-License-Identifier: MIT
#pragma once
// x86 specialisations of the named lane helpers of arch/generic.hpp: SSE2 (4 floats), AVX/AVX2 (8 floats) and
// AVX-512F (16 floats), chosen by the width of the register xsimd's default architecture uses. Each falls back to
// the generic version for a register it does not know; tests/detail/test_arch_lanes.cpp compares every one with
// the generic version on the same inputs, bit for bit. Why each exists (what the generic one would cost):
// - swap_adjacent, load_dup_pairs, fmaddsub: one or two shuffle/FMA instructions instead of a trip through
//   memory (xsimd 8.1 has no portable lane permute; 14.x spells it with batch_constant).
// - mulhilo_u32: vpmuludq twice + a blend (+ vpmulld for the low half); xsimd has no 32x32->64 multiply.
// - reinterpret, store_halves, load_halves, opaque: register casts, 256-bit halves of a zmm, an empty asm.
// - at_least: maxps (the generic version is a compare and a blend).
// - load_widen, store_narrow (16-bit storage): fp16 with F16C's vcvtph2ps / vcvtps2ph (the 512-bit forms under
//   AVX-512F), bf16 with integer shifts and packs (a load and two instructions, where the generic one converts
//   lane by lane through memory). vcvtneps2bf16 (AVX512-BF16) is NOT used: it flushes subnormal inputs and
//   outputs to zero and keeps a NaN's sign and payload, where torch rounds subnormals exactly and writes 0xFFFF.
//   Without F16C (SSE2, or the project's "-mavx2;-mfma" default, which does not imply -mf16c) fp16 converts with
//   integer and float arithmetic in 32-bit lanes (half_lanes_to_float, float_to_half_lanes) and packs.
// - dot_bf16_pairs: vdpbf16ps (AVX512-BF16, 64-byte registers): two bf16 products per float lane in one
//   instruction, the bf16 GEMM's micro-kernel step where kPreferBf16Dot (not on Intel cores, where it runs at
//   half the float FMA's rate); the generic version widens and does two FMAs.
// - round_bf16_pairs: vcvtne2ps2bf16 + vpermw (AVX512-BF16): two float registers to bf16 pairs in two
//   instructions (the generic integer rounding takes seven per register); the bf16-pairs attention's weights.
// - store_stream, stream_fence: movntps / movntpd and sfence (the generic version is an ordinary store), for
//   outputs too large to stay in cache: no read of each line before it is written.
// - reduce_add_lanes: the horizontal sums of L registers at once, transposed (a third of the shuffles of L
//   separate reductions), bitwise equal to xsimd 8's reduce_add of each (the decode path's q.k of L keys).

#include <cstdint>
#include <type_traits>

#include "kexue/detail/arch/generic.hpp"

namespace kexue::detail::x86 {

template <class T>
constexpr std::size_t kRegBytes = sizeof(typename Batch<T>::register_type);

template <class T>
inline Batch<T> swap_adjacent(const Batch<T>& v) {
  constexpr std::size_t kBytes = kRegBytes<T>;
  constexpr bool kFloat = std::is_same<T, float>::value, kDouble = std::is_same<T, double>::value;
  (void)kBytes, (void)kFloat, (void)kDouble;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kFloat) {
    return Batch<T>(_mm512_permute_ps(v, 0xB1));
  } else if constexpr (kBytes == 64 && kDouble) {
    return Batch<T>(_mm512_permute_pd(v, 0x55));
  } else
#endif
#if defined(__AVX__)
      if constexpr (kBytes == 32 && kFloat) {
    return Batch<T>(_mm256_permute_ps(v, 0xB1));
  } else if constexpr (kBytes == 32 && kDouble) {
    return Batch<T>(_mm256_permute_pd(v, 0x5));
  } else
#endif
#if defined(__SSE2__)
      if constexpr (kBytes == 16 && kFloat) {
    return Batch<T>(_mm_shuffle_ps(v, v, 0xB1));
  } else if constexpr (kBytes == 16 && kDouble) {
    return Batch<T>(_mm_shuffle_pd(v, v, 1));
  } else
#endif
  {
    return generic::swap_adjacent<T>(v);
  }
}

template <class T>
inline Batch<T> load_dup_pairs(const T* p) {
  constexpr std::size_t kBytes = kRegBytes<T>;
  constexpr bool kFloat = std::is_same<T, float>::value, kDouble = std::is_same<T, double>::value;
  (void)kBytes, (void)kFloat, (void)kDouble;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kFloat) {
    // A 256-bit load and one cross-lane permute (vpermps): vpermilps on a broadcast, the AVX form, cannot move
    // values between the 128-bit lanes of a zmm.
    const __m512i idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    return Batch<T>(_mm512_permutexvar_ps(idx, _mm512_castps256_ps512(_mm256_loadu_ps(p))));
  } else if constexpr (kBytes == 64 && kDouble) {
    const __m512i idx = _mm512_setr_epi64(0, 0, 1, 1, 2, 2, 3, 3);
    return Batch<T>(_mm512_permutexvar_pd(idx, _mm512_castpd256_pd512(_mm256_loadu_pd(p))));
  } else
#endif
#if defined(__AVX__)
      if constexpr (kBytes == 32 && kFloat) {
    // Both 128-bit lanes hold p0..p3; vpermilps picks within each lane: [0 0 1 1 | 2 2 3 3].
    const __m256 b = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(p));
    return Batch<T>(_mm256_permutevar_ps(b, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)));
  } else if constexpr (kBytes == 32 && kDouble) {
    const __m256d b = _mm256_broadcast_pd(reinterpret_cast<const __m128d*>(p));
    return Batch<T>(_mm256_permute_pd(b, 0xC));
  } else
#endif
#if defined(__SSE2__)
      if constexpr (kBytes == 16 && kFloat) {
    const __m128 b = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)));
    return Batch<T>(_mm_unpacklo_ps(b, b));
  } else if constexpr (kBytes == 16 && kDouble) {
    return Batch<T>(_mm_load1_pd(p));
  } else
#endif
  {
    return generic::load_dup_pairs<T>(p);
  }
}

// a * b + c, c - a * b, a * b - c. xsimd 8.1 has no AVX-512 fma kernel (its fma there is a multiply and an add, two
// roundings and two instructions), so the 64-byte registers call the instructions directly; every other register
// goes through xsimd, whose fma3 kernels fuse and whose SSE2 ones do not, exactly as kFusedFma and madd() say.
template <class T>
inline Batch<T> fmadd(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  constexpr std::size_t kBytes = kRegBytes<T>;
  constexpr bool kFloat = std::is_same<T, float>::value, kDouble = std::is_same<T, double>::value;
  (void)kBytes, (void)kFloat, (void)kDouble;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kFloat) {
    return Batch<T>(_mm512_fmadd_ps(a, b, c));
  } else if constexpr (kBytes == 64 && kDouble) {
    return Batch<T>(_mm512_fmadd_pd(a, b, c));
  } else
#endif
  {
    return xsimd::fma(a, b, c);
  }
}

template <class T>
inline Batch<T> fnmadd(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  constexpr std::size_t kBytes = kRegBytes<T>;
  constexpr bool kFloat = std::is_same<T, float>::value, kDouble = std::is_same<T, double>::value;
  (void)kBytes, (void)kFloat, (void)kDouble;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kFloat) {
    return Batch<T>(_mm512_fnmadd_ps(a, b, c));
  } else if constexpr (kBytes == 64 && kDouble) {
    return Batch<T>(_mm512_fnmadd_pd(a, b, c));
  } else
#endif
  {
    return xsimd::fnma(a, b, c);
  }
}

template <class T>
inline Batch<T> fmsub(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  constexpr std::size_t kBytes = kRegBytes<T>;
  constexpr bool kFloat = std::is_same<T, float>::value, kDouble = std::is_same<T, double>::value;
  (void)kBytes, (void)kFloat, (void)kDouble;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kFloat) {
    return Batch<T>(_mm512_fmsub_ps(a, b, c));
  } else if constexpr (kBytes == 64 && kDouble) {
    return Batch<T>(_mm512_fmsub_pd(a, b, c));
  } else
#endif
  {
    return xsimd::fms(a, b, c);
  }
}

/// sqrtps / sqrtpd through xsimd: IEEE, correctly rounded on every x86 width.
template <class T>
inline Batch<T> sqrt_ieee(const Batch<T>& v) {
  return xsimd::sqrt(v);
}

template <class T>
inline Batch<T> fmaddsub(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  constexpr std::size_t kBytes = kRegBytes<T>;
  constexpr bool kFloat = std::is_same<T, float>::value, kDouble = std::is_same<T, double>::value;
  (void)kBytes, (void)kFloat, (void)kDouble;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kFloat) {
    return Batch<T>(_mm512_fmaddsub_ps(a, b, c));
  } else if constexpr (kBytes == 64 && kDouble) {
    return Batch<T>(_mm512_fmaddsub_pd(a, b, c));
  } else
#endif
#if defined(__FMA__)
      if constexpr (kBytes == 32 && kFloat) {
    return Batch<T>(_mm256_fmaddsub_ps(a, b, c));
  } else if constexpr (kBytes == 32 && kDouble) {
    return Batch<T>(_mm256_fmaddsub_pd(a, b, c));
  } else if constexpr (kBytes == 16 && kFloat) {
    return Batch<T>(_mm_fmaddsub_ps(a, b, c));
  } else if constexpr (kBytes == 16 && kDouble) {
    return Batch<T>(_mm_fmaddsub_pd(a, b, c));
  } else
#endif
  {
    // No fmaddsub instruction (SSE2 without FMA): fmadd with the even lanes of c negated, which is exact.
    constexpr std::size_t L = Batch<T>::size;
    alignas(64) T sign[L];
    for (std::size_t i = 0; i < L; ++i) sign[i] = i % 2 == 0 ? T(-1) : T(1);
    return fmadd<T>(a, b, c * Batch<T>::load_aligned(sign));
  }
}

// A template only so that the branches for other register widths are discarded unchecked.
template <class U = Batch<std::uint32_t>>
inline void mulhilo_u32(const U& a, const U& m, U* hi, U* lo) {
  constexpr std::size_t kBytes = sizeof(typename U::register_type);
  (void)kBytes;
  // vpmuludq multiplies the even 32-bit lanes into 64-bit products, so the odd lanes are shifted down and
  // multiplied separately and the two high halves are blended back into place; the low halves are one vpmulld
  // (as fast as vpmuludq on Zen4, and cheaper than a shift and a blend).
#if defined(__AVX512F__)
  if constexpr (kBytes == 64) {
    const __m512i pe = _mm512_mul_epu32(a, m);
    const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), _mm512_srli_epi64(m, 32));
    *hi = U(_mm512_mask_blend_epi32(__mmask16(0xAAAA), _mm512_srli_epi64(pe, 32), po));
    *lo = U(_mm512_mullo_epi32(a, m));
  } else
#endif
#if defined(__AVX2__)
      if constexpr (kBytes == 32) {
    const __m256i pe = _mm256_mul_epu32(a, m);
    const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(m, 32));
    *hi = U(_mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA));
    *lo = U(_mm256_mullo_epi32(a, m));
  } else
#endif
#if defined(__SSE2__)
      if constexpr (kBytes == 16) {
    // SSE2 has neither vpblendd nor pmulld: masks and shifts put the four halves in place.
    const __m128i pe = _mm_mul_epu32(a, m);
    const __m128i po = _mm_mul_epu32(_mm_srli_epi64(a, 32), _mm_srli_epi64(m, 32));
    const __m128i odd = _mm_set_epi32(-1, 0, -1, 0);
    *hi = U(_mm_or_si128(_mm_srli_epi64(pe, 32), _mm_and_si128(po, odd)));
    *lo = U(_mm_or_si128(_mm_andnot_si128(odd, pe), _mm_slli_epi64(po, 32)));
  } else
#endif
  {
    generic::mulhilo_u32(a, m, hi, lo);
  }
}

template <class To, class From>
inline Batch<To> reinterpret(const Batch<From>& v) {
  static_assert(sizeof(To) == 4 && sizeof(From) == 4, "kexue: reinterpret handles 32-bit lanes");
  constexpr std::size_t kBytes = kRegBytes<From>;
  constexpr bool kToF = std::is_same<To, float>::value, kFromF = std::is_same<From, float>::value;
  (void)kBytes, (void)kToF, (void)kFromF;
  if constexpr (kToF == kFromF) {
    return Batch<To>(typename Batch<To>::register_type(v));  // int32 <-> uint32: the same register type
  } else
#if defined(__AVX512F__)
      if constexpr (kBytes == 64 && kToF) {
    return Batch<To>(_mm512_castsi512_ps(v));
  } else if constexpr (kBytes == 64) {
    return Batch<To>(_mm512_castps_si512(v));
  } else
#endif
#if defined(__AVX__)
      if constexpr (kBytes == 32 && kToF) {
    return Batch<To>(_mm256_castsi256_ps(v));
  } else if constexpr (kBytes == 32) {
    return Batch<To>(_mm256_castps_si256(v));
  } else
#endif
#if defined(__SSE2__)
      if constexpr (kBytes == 16 && kToF) {
    return Batch<To>(_mm_castsi128_ps(v));
  } else if constexpr (kBytes == 16) {
    return Batch<To>(_mm_castps_si128(v));
  } else
#endif
  {
    return generic::reinterpret<To>(v);
  }
}

template <class T>
inline void store_halves(T* lo, T* hi, const Batch<T>& v) {
  constexpr bool kFloat = std::is_same<T, float>::value;
  (void)kFloat;
#if defined(__AVX512F__)
  if constexpr (kRegBytes<T> == 64 && kFloat) {
    _mm256_storeu_ps(lo, _mm512_castps512_ps256(v));
    _mm256_storeu_ps(hi, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  } else
#endif
  {
    generic::store_halves<T>(lo, hi, v);
  }
}

template <class T>
inline Batch<T> load_halves(const T* lo, const T* hi) {
  constexpr bool kFloat = std::is_same<T, float>::value;
  (void)kFloat;
#if defined(__AVX512F__)
  if constexpr (kRegBytes<T> == 64 && kFloat) {
    const __m512d l = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(lo)));
    return Batch<T>(_mm512_castpd_ps(_mm512_insertf64x4(l, _mm256_castps_pd(_mm256_loadu_ps(hi)), 1)));
  } else
#endif
  {
    return generic::load_halves<T>(lo, hi);
  }
}

// maxps(a, b) is a > b ? a : b, its second operand whenever either is NaN: maxps(x, lo) is exactly at_least, one
// instruction instead of a compare and a blend.
template <class T>
inline Batch<T> at_least(const Batch<T>& x, const Batch<T>& lo) {
  constexpr std::size_t kBytes = kRegBytes<T>;
  constexpr bool kFloat = std::is_same<T, float>::value, kDouble = std::is_same<T, double>::value;
  (void)kBytes, (void)kFloat, (void)kDouble;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kFloat) {
    return Batch<T>(_mm512_max_ps(x, lo));
  } else if constexpr (kBytes == 64 && kDouble) {
    return Batch<T>(_mm512_max_pd(x, lo));
  } else
#endif
#if defined(__AVX__)
      if constexpr (kBytes == 32 && kFloat) {
    return Batch<T>(_mm256_max_ps(x, lo));
  } else if constexpr (kBytes == 32 && kDouble) {
    return Batch<T>(_mm256_max_pd(x, lo));
  } else
#endif
#if defined(__SSE2__)
      if constexpr (kBytes == 16 && kFloat) {
    return Batch<T>(_mm_max_ps(x, lo));
  } else if constexpr (kBytes == 16 && kDouble) {
    return Batch<T>(_mm_max_pd(x, lo));
  } else
#endif
  {
    return generic::at_least<T>(x, lo);
  }
}

template <class T>
inline Batch<T> opaque(const Batch<T>& v) {
#if defined(__GNUC__)
  // An empty asm that claims to change the register: the value is whatever the asm left, so the product that
  // produced it cannot be fused with the addition that consumes it. "v" is any xmm/ymm/zmm register.
  typename Batch<T>::register_type r = v;
  __asm__("" : "+v"(r));
  return Batch<T>(r);
#else
  return generic::opaque<T>(v);
#endif
}

#if defined(__AVX__) && XSIMD_VERSION_MAJOR < 9
/// The eight hadd sums of eight ymm float registers, lane u = hadd(w[u]) bit for bit (see reduce_add_lanes).
KEXUE_ALWAYS_INLINE __m256 hadd_lanes_avx(const __m256* t) {
  __m256 w[4];
  for (int u = 0; u < 4; ++u) {
    const __m256 a = t[u], b = t[u + 4];
    w[u] = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
  }
  return _mm256_hadd_ps(_mm256_hadd_ps(w[0], w[1]), _mm256_hadd_ps(w[2], w[3]));
}
/// The four hadd sums of four ymm double registers.
KEXUE_ALWAYS_INLINE __m256d hadd_lanes_avx(const __m256d* t) {
  __m256d w[2];
  for (int u = 0; u < 2; ++u) {
    const __m256d a = t[u], b = t[u + 2];
    w[u] = _mm256_add_pd(_mm256_permute2f128_pd(a, b, 0x20), _mm256_permute2f128_pd(a, b, 0x31));
  }
  return _mm256_hadd_pd(w[0], w[1]);
}
#endif

/// The kLanes<T> sums of kLanes<T> batches t[0..L) as one batch (lane u = the sum of t[u]), each with the bits
/// of reduce_add<T>(t[u]). With xsimd 8 on AVX, reduce_add is hadd: x + (x with its 128-bit halves swapped),
/// then two horizontal adds, i.e. ((x0 + x4) + (x1 + x5)) + ((x2 + x6) + (x3 + x7)) for float and
/// (x0 + x2) + (x1 + x3) for double; on AVX-512 it first adds the two 256-bit halves, then does the same. The
/// transposed forms below make exactly those sums for L batches at once (a third of the shuffles); any other
/// version or instruction set reduces each batch with reduce_add itself (the generic path, which
/// tests/detail/test_simd.cpp compares them with).
template <class T>
KEXUE_ALWAYS_INLINE Batch<T> reduce_add_lanes(const Batch<T>* t) {
  using Reg = typename Batch<T>::register_type;
  constexpr bool kFloat = std::is_same<T, float>::value;
  (void)kFloat;
  (void)sizeof(Reg);  // only the x86 branches name it
#if defined(__AVX512F__) && XSIMD_VERSION_MAJOR < 9
  if constexpr (sizeof(Reg) == 64 && kFloat) {
    // A tree of two-source shuffles and adds, 45 instructions for the 16 sums (adding each batch's 256-bit halves,
    // then two 8-register hadd_lanes_avx, takes 74),
    // each batch's additions in reduce_add's order: ((s0 + s4) + (s1 + s5)) + ((s2 + s6) + (s3 + s7)) with
    // s_i = x_i + x_{i+8}. Level 1 adds the 256-bit halves (two batches per register), level 2 the 128-bit
    // quarters (four batches), levels 3 and 4 the pairs within each quarter. The tree leaves batch kOrder[u]'s sum
    // in lane u's place of the input order; taking the inputs in that order puts batch u's sum in lane u.
    constexpr int kOrder[16] = {0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
    __m512 a[8], b[4], c[2];
    for (int u = 0; u < 8; ++u) {
      const __m512 x = static_cast<Reg>(t[kOrder[2 * u]]), y = static_cast<Reg>(t[kOrder[2 * u + 1]]);
      a[u] = _mm512_add_ps(_mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(1, 0, 1, 0)),
                           _mm512_shuffle_f32x4(x, y, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    for (int u = 0; u < 4; ++u)
      b[u] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * u], a[2 * u + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_f32x4(a[2 * u], a[2 * u + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int u = 0; u < 2; ++u)
      c[u] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * u], b[2 * u + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                           _mm512_shuffle_ps(b[2 * u], b[2 * u + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return Batch<T>(_mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_ps(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1))));
  } else if constexpr (sizeof(Reg) == 64 && !kFloat) {
    __m256d h[8];
    for (int u = 0; u < 8; ++u) {
      const __m512d x = static_cast<Reg>(t[u]);
      h[u] = _mm256_add_pd(_mm512_extractf64x4_pd(x, 1), _mm512_castpd512_pd256(x));
    }
    return Batch<T>(_mm512_insertf64x4(_mm512_castpd256_pd512(hadd_lanes_avx(h)), hadd_lanes_avx(h + 4), 1));
  } else
#endif
#if defined(__AVX__) && XSIMD_VERSION_MAJOR < 9
  if constexpr (sizeof(Reg) == 32) {
    Reg r[kLanes<T>];
    for (Index u = 0; u < kLanes<T>; ++u) r[u] = static_cast<Reg>(t[u]);
    return Batch<T>(hadd_lanes_avx(r));
  } else
#endif
  {
    return generic::reduce_add_lanes<T>(t);
  }
}

// ---- 16-bit storage ---------------------------------------------------------------------------------------------

// fp16 <-> float without F16C (SSE2, or AVX2 built without -mf16c): integer and float arithmetic in 32-bit
// lanes instead of the generic version's lane-by-lane conversion. Widening rebiases the exponent and renormalises
// subnormals with one exact float subtraction (no subnormal operand, so DAZ cannot interfere); narrowing rounds
// normals to nearest even on the bits and subnormals with one float addition of 0.5 (whose ulp is fp16's 2^-24).
// Lanes hold fp16 bits zero-extended to 32 bits.
template <class I = Batch<std::int32_t>>
inline Batch<float> half_lanes_to_float(const I& h) {
  const I sign = (h & I(0x8000)) << 16;
  const I o = (h & I(0x7FFF)) << 13;
  const I e = o & I(0x0F800000);
  I r = o + I((127 - 15) << 23);
  // inf / NaN: exponent to all ones, and a NaN quiet (as vcvtph2ps, fcvtl and torch).
  r = xsimd::select(e == I(0x0F800000), (r + I((128 - 16) << 23)) | xsimd::select(o > I(0x0F800000), I(0x400000), I(0)),
                    r);
  // Zero and subnormals: 2^-14 (1 + m 2^-10) - 2^-14 = m 2^-24, exactly.
  const Batch<float> renorm = reinterpret<float>(r + I(1 << 23)) - Batch<float>(generic::bits_float(113u << 23));
  r = xsimd::select(e == I(0), reinterpret<std::int32_t>(renorm), r);
  return reinterpret<float>(r | sign);
}

template <class F = Batch<float>>
inline Batch<std::int32_t> float_to_half_lanes(const F& v) {
  using I = Batch<std::int32_t>;
  const I x = reinterpret<std::int32_t>(v);
  const I sign = (x >> 16) & I(0x8000);
  const I a = x & I(0x7FFFFFFF);
  // Normal results: rebias, add 0xFFF plus the lowest kept bit, shift (a carry into 0x7C00 is the overflow to inf).
  const I normal = (a + I(int(0xC8000FFFu)) + ((a >> 13) & I(1))) >> 13;
  // Subnormal results (|x| < 2^-14): |x| + 0.5 rounds at 2^-24; its low bits are the fp16 subnormal.
  const I sub = reinterpret<std::int32_t>(reinterpret<float>(a) + F(0.5f)) - I(0x3F000000);
  I r = xsimd::select(a < I(0x38800000), sub, normal);
  r = xsimd::select(a >= I(0x47800000), xsimd::select(a > I(0x7F800000), I(kHalfQuietNaN), I(0x7C00)), r);
  return r | sign;
}

/// kLanes<float> halves or bfloat16s at p (any alignment) as floats, exact (see generic::load_widen).
template <class H, class F = std::conditional_t<kIs16Bit<H>, Batch<float>, void>>  // F: branches stay unchecked
inline F load_widen(const H* p) {
  constexpr std::size_t kBytes = kRegBytes<float>;
  constexpr bool kHalf = std::is_same<H, Eigen::half>::value;
  (void)kBytes, (void)kHalf;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kHalf) {
    return F(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
  } else if constexpr (kBytes == 64) {
#if defined(__AVX512BW__)
    // bf16 i into the upper half of 32-bit lane i, zeros below: one word permute (vpermw with a zero mask), where
    // zero-extension and a shift cost two operations, the shift on an FMA port.
    const __m512i idx = _mm512_set_epi16(15, 0, 14, 0, 13, 0, 12, 0, 11, 0, 10, 0, 9, 0, 8, 0, 7, 0, 6, 0, 5, 0, 4, 0,
                                         3, 0, 2, 0, 1, 0, 0, 0);
    const __m512i x = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return F(_mm512_castsi512_ps(_mm512_maskz_permutexvar_epi16(__mmask32(0xAAAAAAAAu), idx, x)));
#else
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return F(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
#endif
  } else
#endif
#if defined(__AVX__) && defined(__F16C__)
      if constexpr (kBytes == 32 && kHalf) {
    return F(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  } else
#endif
#if defined(__AVX2__)
      if constexpr (kBytes == 32 && !kHalf) {
    // The 8 bf16 in both 128-bit halves (a broadcast load, no ALU operation), then one byte shuffle puts bf16 i
    // (of the half's four) into the upper half of 32-bit lane i with zeros below; zero-extension and a shift would
    // cost two operations, the shift on an FMA port.
    const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m256i pick = _mm256_setr_epi8(-1, -1, 0, 1, -1, -1, 2, 3, -1, -1, 4, 5, -1, -1, 6, 7,  //
                                          -1, -1, 8, 9, -1, -1, 10, 11, -1, -1, 12, 13, -1, -1, 14, 15);
    return F(_mm256_castsi256_ps(_mm256_shuffle_epi8(x, pick)));
  } else
#endif
#if defined(__AVX2__) && !defined(__F16C__)
      if constexpr (kBytes == 32 && kHalf) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return half_lanes_to_float(xsimd::batch<std::int32_t, typename F::arch_type>(w));
  } else
#endif
#if defined(__F16C__)
      if constexpr (kBytes == 16 && kHalf) {
    return F(_mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  } else
#endif
#if defined(__SSE2__) && !defined(__F16C__)
      if constexpr (kBytes == 16 && kHalf) {
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    // The integer batch is named through F so that it stays dependent: clang checks a non-dependent
    // expression even in a discarded branch, and Batch<std::int32_t> is 256 bits wide in an AVX2 build.
    return half_lanes_to_float(xsimd::batch<std::int32_t, typename F::arch_type>(_mm_unpacklo_epi16(h, _mm_setzero_si128())));
  } else
#endif
#if defined(__SSE2__)
      if constexpr (kBytes == 16 && !kHalf) {
    // Interleaving zeros below each 16-bit value is the shift by 16.
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    return F(_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), h)));
  } else
#endif
  {
    return generic::load_widen<H>(p);
  }
}

#if defined(__SSE2__)
/// vcvtps2ph keeps a NaN's sign and the top 9 bits of its payload (and sets the quiet bit): clearing those
/// 9 bits in the NaN lanes (|h| > 0x7C00) gives torch's sign | 0x7E00.
inline __m128i half_nan_fixup(__m128i h) {
  const __m128i nan = _mm_cmpgt_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7FFF)), _mm_set1_epi16(0x7C00));
  return _mm_andnot_si128(_mm_and_si128(nan, _mm_set1_epi16(0x01FF)), h);
}
#endif
#if defined(__AVX2__)
inline __m256i half_nan_fixup(__m256i h) {
  const __m256i nan = _mm256_cmpgt_epi16(_mm256_and_si256(h, _mm256_set1_epi16(0x7FFF)), _mm256_set1_epi16(0x7C00));
  return _mm256_andnot_si256(_mm256_and_si256(nan, _mm256_set1_epi16(0x01FF)), h);
}
#endif

/// The lanes of v rounded to H (nearest even, torch's NaN bits) and stored at p (any alignment).
template <class H, class F = std::conditional_t<kIs16Bit<H>, Batch<float>, void>>
inline void store_narrow(H* p, const F& v) {
  constexpr std::size_t kBytes = kRegBytes<float>;
  constexpr bool kHalf = std::is_same<H, Eigen::half>::value;
  (void)kBytes, (void)kHalf;
  constexpr int kNearest = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
  (void)kNearest;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kHalf) {
    const __m256i h = half_nan_fixup(_mm512_cvtps_ph(v, kNearest));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), h);
  } else if constexpr (kBytes == 64) {
    // Round to nearest even on the bits (x + 0x7FFF + bit 16), keep the upper halves (vpmovdw), NaN -> 0xFFFF.
    const __m512i x = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7FFF)), lsb), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_set1_epi32(kBf16NaN));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  } else
#endif
#if defined(__AVX__) && defined(__F16C__)
      if constexpr (kBytes == 32 && kHalf) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), half_nan_fixup(_mm256_cvtps_ph(v, kNearest)));
  } else
#endif
#if defined(__AVX2__)
      if constexpr (kBytes == 32 && !kHalf) {
    // The rounded value sits in the upper 16 bits; an arithmetic shift sign-extends it so that the signed
    // saturating pack (vpackssdw) keeps it exactly. A NaN lane is all ones first: its shift is -1 = 0xFFFF.
    const __m256i x = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(x, 16), _mm256_set1_epi32(1));
    __m256i t = _mm256_add_epi32(_mm256_add_epi32(x, _mm256_set1_epi32(0x7FFF)), lsb);
    t = _mm256_or_si256(t, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    const __m256i packed = _mm256_packs_epi32(_mm256_srai_epi32(t, 16), _mm256_setzero_si256());
    // vpackssdw packs within each 128-bit half: quadwords 0 and 2 hold the eight results.
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08)));
  } else
#endif
#if defined(__AVX2__) && !defined(__F16C__)
      if constexpr (kBytes == 32 && kHalf) {
    // The results are 16-bit values in 32-bit lanes: sign-extend them so the signed pack keeps them exactly.
    const __m256i r = float_to_half_lanes(v);
    const __m256i packed = _mm256_packs_epi32(_mm256_srai_epi32(_mm256_slli_epi32(r, 16), 16), _mm256_setzero_si256());
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08)));
  } else
#endif
#if defined(__F16C__)
      if constexpr (kBytes == 16 && kHalf) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), half_nan_fixup(_mm_cvtps_ph(v, kNearest)));
  } else
#endif
#if defined(__SSE2__) && !defined(__F16C__)
      if constexpr (kBytes == 16 && kHalf) {
    const __m128i r = float_to_half_lanes(v);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p),
                     _mm_packs_epi32(_mm_srai_epi32(_mm_slli_epi32(r, 16), 16), _mm_setzero_si128()));
  } else
#endif
#if defined(__SSE2__)
      if constexpr (kBytes == 16 && !kHalf) {
    const __m128i x = _mm_castps_si128(v);
    const __m128i lsb = _mm_and_si128(_mm_srli_epi32(x, 16), _mm_set1_epi32(1));
    __m128i t = _mm_add_epi32(_mm_add_epi32(x, _mm_set1_epi32(0x7FFF)), lsb);
    t = _mm_or_si128(t, _mm_castps_si128(_mm_cmpunord_ps(v, v)));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm_packs_epi32(_mm_srai_epi32(t, 16), _mm_setzero_si128()));
  } else
#endif
  {
    generic::store_narrow<H>(p, v);
  }
}

/// True where dot_bf16_pairs is one instruction (vdpbf16ps on 16-float registers).
constexpr bool kNativeBf16Dot =
#if defined(__AVX512BF16__) && defined(__AVX512F__)
    kRegBytes<float> == 64;
#else
    false;
#endif

/// Whether the bf16 kernels should spend vdpbf16ps (kNativeBf16Dot) rather than widen bf16 to float once, when
/// packing, and run float FMAs: the same bits on normal numbers, but the instruction's rate depends on the core,
/// which the build cannot name. Measured with bench_gemm (bf16 GEMM against float GEMM, -march=native, one
/// thread): on Intel Xeon "Emerald Rapids" (family 6 model 0xCF) vdpbf16ps zmm issues once per 2 cycles against
/// two FMAs per cycle, so 2 products per lane per 2 cycles where float FMA does 4, and the vdpbf16ps GEMM ran at
/// 0.59x the float GEMM (80 vs 136 GFLOP/s); issue 13 was written on AMD Zen4, where it is the fast path. So the
/// build takes AVX512-FP16, which Intel's Sapphire Rapids and later server cores have and no AMD core has to date,
/// as the sign of the slow implementation. KEXUE_BF16_DOT=0 or 1 overrides the guess (1 only where the
/// instruction exists).
constexpr bool kPreferBf16Dot =
#if defined(KEXUE_BF16_DOT)
    kNativeBf16Dot && (KEXUE_BF16_DOT != 0);
#elif defined(__AVX512FP16__)
    false;
#else
    kNativeBf16Dot;
#endif

/// acc + a_odd b_odd + a_even b_even per lane, rounded after each addition (see generic::dot_bf16_pairs), with
/// vdpbf16ps where the build has AVX512-BF16. It flushes subnormal inputs and results to zero.
template <class U = Batch<std::uint32_t>>  // a template only so that the other widths' branches stay unchecked
inline Batch<float> dot_bf16_pairs(const Batch<float>& acc, const U& a, const U& b) {
#if defined(__AVX512BF16__) && defined(__AVX512F__)
  if constexpr (sizeof(typename U::register_type) == 64) {
    return Batch<float>(_mm512_dpbf16_ps(acc, (__m512bh)static_cast<__m512i>(a), (__m512bh)static_cast<__m512i>(b)));
  } else
#endif
  {
    return fmadd<float>(generic::bf16_even(a), generic::bf16_even(b),
                        fmadd<float>(generic::bf16_odd(a), generic::bf16_odd(b), acc));
  }
}

/// round_bf16_pairs (generic.hpp) with vcvtne2ps2bf16 and a word interleave (AVX512-BF16 on 64-byte registers):
/// two instructions where the generic rounding takes seven per register. vcvtne2ps2bf16 treats subnormal inputs
/// as zero and rounds to nearest even, the generic version's rule for every non-NaN input.
template <class F = Batch<float>>  // a template only so that the other widths' branches stay unchecked
inline Batch<std::uint32_t> round_bf16_pairs(const F& lo, const F& hi) {
#if defined(__AVX512BF16__) && defined(__AVX512BW__)
  if constexpr (sizeof(typename F::register_type) == 64) {
    // Words [lo_0 .. lo_15, hi_0 .. hi_15], then word 2i <- lo_i and 2i + 1 <- hi_i.
    const __m512i words = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
    alignas(64) static constexpr std::uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,
                                                                  21, 6, 22, 7, 23, 8,  24, 9,  25, 10, 26,
                                                                  11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    return Batch<std::uint32_t>(
        _mm512_permutexvar_epi16(_mm512_load_si512(static_cast<const void*>(kInterleave)), words));
  } else
#endif
  {
    return generic::round_bf16_pairs(lo, hi);
  }
}

/// movntps / movntpd (vmovntps / vmovntpd for 32- and 64-byte registers): the register written to memory without
/// the read-for-ownership of an ordinary store and without taking a cache line; p aligned to the register.
template <class T>
inline void store_stream(T* p, const Batch<T>& v) {
  constexpr std::size_t kBytes = kRegBytes<T>;
  constexpr bool kFloat = std::is_same<T, float>::value, kDouble = std::is_same<T, double>::value;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kFloat) {
    _mm512_stream_ps(p, v);
  } else if constexpr (kBytes == 64 && kDouble) {
    _mm512_stream_pd(p, v);
  } else
#endif
#if defined(__AVX__)
  if constexpr (kBytes == 32 && kFloat) {
    _mm256_stream_ps(p, v);
  } else if constexpr (kBytes == 32 && kDouble) {
    _mm256_stream_pd(p, v);
  } else
#endif
  if constexpr (kBytes == 16 && kFloat) {
    _mm_stream_ps(p, v);
  } else if constexpr (kBytes == 16 && kDouble) {
    _mm_stream_pd(p, v);
  } else {
    generic::store_stream<T>(p, v);
  }
}

/// sfence: the weakly ordered non-temporal stores become visible before any later store (a flag, a barrier).
inline void stream_fence() { _mm_sfence(); }

}  // namespace kexue::detail::x86
