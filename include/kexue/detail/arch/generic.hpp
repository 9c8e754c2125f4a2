// SPDX-License-Identifier: MIT
#pragma once
// The portable versions of kexue's named lane helpers, written with xsimd operations or with a store, a scalar
// loop and a load through an aligned array. They work for any register width (1, 2, 4, 8, 16 lanes) and any
// xsimd architecture, and they are the test oracle for the per-architecture versions in x86.hpp and neon.hpp
// (tests/detail/test_arch_lanes.cpp compares the two on the same inputs). Kernels do not call these directly:
// they call the dispatching names in arch/ops.hpp.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kexue/detail/simd.hpp"

#include "kexue/core.hpp"  // Eigen::half, Eigen::bfloat16 and kIs16Bit (Eigen after simd.hpp's intrinsics)

namespace kexue::detail {

/// NaN as torch 1.13's CPU `.to(torch.bfloat16)` writes it, whatever the sign or payload of the float NaN: its
/// vectorised conversion (ATen's cvtfp32_bf16, which every tensor length reaches) puts 0xFFFF, a quiet NaN.
/// (c10's scalar BFloat16 constructor would write 0x7FC0; what `.to()` produced is what tests/reference pins.)
constexpr std::uint16_t kBf16NaN = 0xFFFF;
/// NaN as torch writes it for float16: the sign kept, the payload dropped (c10's fp16_ieee_from_fp32_value).
constexpr std::uint16_t kHalfQuietNaN = 0x7E00;

}  // namespace kexue::detail

namespace kexue::detail::generic {

// ---- 16-bit storage: scalar conversions on the raw bits (the oracle for every vector form) ---------------------

inline std::uint32_t float_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// float -> IEEE binary16 bits, round to nearest even: subnormal results exact, |x| >= 65520 (the midpoint
/// between 65504 and 2^16, which ties up to the even 2^16) -> inf, NaN -> sign | 0x7E00 (torch's bits).
inline std::uint16_t float_to_half_bits(float f) {
  const std::uint32_t x = float_bits(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u, a = x & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return std::uint16_t(sign | kHalfQuietNaN);
  if (a >= 0x477FF000u) return std::uint16_t(sign | 0x7C00u);
  if (a < 0x38800000u) {  // below 2^-14: a half subnormal (unit 2^-24) or zero
    const std::uint32_t e = a >> 23;
    if (e < 102) return std::uint16_t(sign);  // below 2^-25 (float subnormals too): rounds to zero
    const std::uint32_t m = (a & 0x7FFFFFu) | 0x800000u, shift = 126 - e;  // value = m 2^(e-150) = (m >> shift) 2^-24
    std::uint32_t q = m >> shift;
    const std::uint32_t r = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    q += (r > half || (r == half && (q & 1u))) ? 1u : 0u;  // may carry into 0x400, the smallest normal: right
    return std::uint16_t(sign | q);
  }
  std::uint32_t b = a - ((127u - 15u) << 23);
  b += 0xFFFu + ((b >> 13) & 1u);
  return std::uint16_t(sign | (b >> 13));
}

/// IEEE binary16 bits -> float, exact (subnormals normalised); a NaN keeps sign and payload and becomes quiet,
/// as F16C's vcvtph2ps, NEON's fcvtl and torch do.
inline float half_bits_to_float(std::uint16_t h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
  if (e == 0x1F) return bits_float(sign | 0x7F800000u | (m << 13) | (m != 0 ? 0x400000u : 0u));
  if (e == 0) {
    const float v = std::ldexp(float(m), -24);  // exact: m < 2^10
    return sign != 0 ? -v : v;
  }
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

/// float -> bfloat16 bits, round to nearest even on the bits (subnormals exact; overflow carries into inf),
/// NaN -> kBf16NaN.
inline std::uint16_t float_to_bf16_bits(float f) {
  const std::uint32_t x = float_bits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return kBf16NaN;
  return std::uint16_t((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}

/// bfloat16 bits -> float: the upper half of the float's bits (exact, NaNs unchanged, as torch).
inline float bf16_bits_to_float(std::uint16_t h) { return bits_float(std::uint32_t(h) << 16); }

template <class H>
inline std::uint16_t bits16(H h) {
  static_assert(kIs16Bit<H>, "kexue: a 16-bit storage type");
  std::uint16_t u;
  std::memcpy(&u, static_cast<const void*>(&h), sizeof u);
  return u;
}
template <class H>
inline H from_bits16(std::uint16_t u) {
  static_assert(kIs16Bit<H>, "kexue: a 16-bit storage type");
  H h;
  std::memcpy(static_cast<void*>(&h), &u, sizeof u);
  return h;
}

/// The float value of a 16-bit element (exact).
template <class H>
inline float to_float(H h) {
  if constexpr (std::is_same<H, Eigen::half>::value) {
    return half_bits_to_float(bits16(h));
  } else {
    return bf16_bits_to_float(bits16(h));
  }
}

/// x rounded to the 16-bit type H, to nearest even, as torch's `.to()`. Not Eigen's constructors: Eigen::half(x)
/// keeps a NaN's payload where F16C is enabled, and neither NaN matches torch's bits.
template <class H>
inline H from_float(float x) {
  if constexpr (std::is_same<H, Eigen::half>::value) {
    return from_bits16<H>(float_to_half_bits(x));
  } else {
    return from_bits16<H>(float_to_bf16_bits(x));
  }
}

/// [v0, v1, v2, v3, ...] -> [v1, v0, v3, v2, ...] (an even lane count).
template <class T>
inline Batch<T> swap_adjacent(const Batch<T>& v) {
  constexpr std::size_t L = Batch<T>::size;
  alignas(64) T lanes[L];
  v.store_aligned(lanes);
  for (std::size_t i = 0; i + 1 < L; i += 2) {
    const T t = lanes[i];
    lanes[i] = lanes[i + 1];
    lanes[i + 1] = t;
  }
  return Batch<T>::load_aligned(lanes);
}

/// [p0, p0, p1, p1, ...] from kLanes/2 consecutive values at p (reads exactly kLanes/2 values).
template <class T>
inline Batch<T> load_dup_pairs(const T* p) {
  constexpr std::size_t L = Batch<T>::size;
  alignas(64) T lanes[L];
  for (std::size_t i = 0; i < L; ++i) lanes[i] = p[i / 2];
  return Batch<T>::load_aligned(lanes);
}

/// a * b + c lane by lane, rounded as madd() rounds (once where kFusedFma). Not xsimd::fma: in xsimd 8.1 that is a
/// multiply and an add on AVX-512 (no avx512f fma kernel), two roundings where the hardware has a fused one.
template <class T>
inline Batch<T> fmadd(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  constexpr std::size_t L = Batch<T>::size;
  alignas(64) T x[L], y[L], z[L];
  a.store_aligned(x);
  b.store_aligned(y);
  c.store_aligned(z);
  for (std::size_t i = 0; i < L; ++i) z[i] = madd(x[i], y[i], z[i]);
  return Batch<T>::load_aligned(z);
}

/// c - a * b, rounded as madd(-a, b, c).
template <class T>
inline Batch<T> fnmadd(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  return fmadd<T>(-a, b, c);
}

/// a * b - c, rounded as madd(a, b, -c).
template <class T>
inline Batch<T> fmsub(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  return fmadd<T>(a, b, -c);
}

/// a * b - c in even lanes, a * b + c in odd lanes, each rounded as madd() (the two halves of a fused fmaddsub).
template <class T>
inline Batch<T> fmaddsub(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  constexpr std::size_t L = Batch<T>::size;
  alignas(64) T sign[L];
  for (std::size_t i = 0; i < L; ++i) sign[i] = i % 2 == 0 ? T(-1) : T(1);
  return fmadd<T>(a, b, c * Batch<T>::load_aligned(sign));
}

/// The correctly rounded square root of every lane (std::sqrt lane by lane). Not xsimd::sqrt: on ARM64, xsimd 8.1's
/// float sqrt is a reciprocal estimate with two Newton steps, off by an ulp or two.
template <class T>
inline Batch<T> sqrt_ieee(const Batch<T>& v) {
  constexpr std::size_t L = Batch<T>::size;
  alignas(64) T x[L];
  v.store_aligned(x);
  for (std::size_t i = 0; i < L; ++i) x[i] = std::sqrt(x[i]);
  return Batch<T>::load_aligned(x);
}

/// The high and low 32 bits of the 64-bit products a[l] * m[l] (Philox's mulhilo).
inline void mulhilo_u32(const Batch<std::uint32_t>& a, const Batch<std::uint32_t>& m, Batch<std::uint32_t>* hi,
                        Batch<std::uint32_t>* lo) {
  constexpr std::size_t L = Batch<std::uint32_t>::size;
  alignas(64) std::uint32_t va[L], vm[L], vh[L], vl[L];
  a.store_aligned(va);
  m.store_aligned(vm);
  for (std::size_t i = 0; i < L; ++i) {
    const std::uint64_t p = std::uint64_t(va[i]) * vm[i];
    vh[i] = std::uint32_t(p >> 32);
    vl[i] = std::uint32_t(p);
  }
  *hi = Batch<std::uint32_t>::load_aligned(vh);
  *lo = Batch<std::uint32_t>::load_aligned(vl);
}

/// The register with the same bits in another lane type of the same width (float <-> int32 <-> uint32): a
/// reinterpretation, not a conversion. xsimd spells it bitwise_cast in 8.x and differently later.
template <class To, class From>
inline Batch<To> reinterpret(const Batch<From>& v) {
  static_assert(sizeof(To) == sizeof(From), "kexue: reinterpret keeps the lane width");
  constexpr std::size_t L = Batch<From>::size;
  alignas(64) From in[L];
  alignas(64) To out[L];
  v.store_aligned(in);
  std::memcpy(out, in, sizeof out);
  return Batch<To>::load_aligned(out);
}

/// Stores lanes [0, L/2) at lo and lanes [L/2, L) at hi (two half-registers to unrelated places).
template <class T>
inline void store_halves(T* lo, T* hi, const Batch<T>& v) {
  constexpr std::size_t L = Batch<T>::size;
  alignas(64) T lanes[L];
  v.store_aligned(lanes);
  std::memcpy(lo, lanes, sizeof lanes / 2);
  std::memcpy(hi, lanes + L / 2, sizeof lanes / 2);
}

/// The register whose lanes [0, L/2) come from lo and [L/2, L) from hi (reads L/2 values at each).
template <class T>
inline Batch<T> load_halves(const T* lo, const T* hi) {
  constexpr std::size_t L = Batch<T>::size;
  alignas(64) T lanes[L];
  std::memcpy(lanes, lo, sizeof lanes / 2);
  std::memcpy(lanes + L / 2, hi, sizeof lanes / 2);
  return Batch<T>::load_aligned(lanes);
}

/// lo < x ? x : lo in every lane: max(x, lo) where a NaN x gives lo. The kernels clamp logits and rectify through
/// this, so a NaN logit counts as the most negative one on every ISA: an overflowing q.k of finite inputs can be
/// inf - inf = NaN, and finite inputs must give a finite row (x86's vmaxps(x, lo) is exactly this; ARM64's fmax
/// would return the NaN).
template <class T>
inline Batch<T> at_least(const Batch<T>& x, const Batch<T>& lo) {
  return xsimd::select(lo < x, x, lo);
}

/// v, hidden from the optimiser: a product that feeds an addition stays rounded on its own (the compiler cannot
/// contract it into an FMA). The portable form goes through memory.
template <class T>
inline Batch<T> opaque(const Batch<T>& v) {
  constexpr std::size_t L = Batch<T>::size;
  alignas(64) volatile T lanes[L];
  alignas(64) T out[L];
  alignas(64) T in[L];
  v.store_aligned(in);
  for (std::size_t i = 0; i < L; ++i) lanes[i] = in[i];
  for (std::size_t i = 0; i < L; ++i) out[i] = lanes[i];
  return Batch<T>::load_aligned(out);
}

/// The kLanes sums of kLanes batches t[0..L) as one batch: lane u = reduce_add(t[u]), each batch on its own.
template <class T>
KEXUE_ALWAYS_INLINE Batch<T> reduce_add_lanes(const Batch<T>* t) {
  constexpr std::size_t L = Batch<T>::size;
  alignas(64) T lanes[L];
  for (std::size_t u = 0; u < L; ++u) lanes[u] = reduce_add<T>(t[u]);
  return Batch<T>::load_aligned(lanes);
}

/// x rounded to the 16-bit type H once (to nearest even): x is first rounded to float with round-to-odd (the
/// truncation, with the lowest bit set when inexact), which keeps a float-to-H rounding exact because float has
/// more than two bits beyond H's precision in every range (the classic double-rounding fix).
template <class H>
inline H from_double(double x) {
  float f = static_cast<float>(x);
  if (std::isfinite(f) && static_cast<double>(f) != x) {
    std::uint32_t u = float_bits(f);
    if (std::abs(static_cast<double>(f)) > std::abs(x)) --u;  // rounded away from zero: step back to the truncation
    f = bits_float(u | 1u);
  }
  return from_float<H>(f);
}

/// kLanes<float> 16-bit values at p (any alignment) widened to floats (exact).
template <class H>
inline Batch<float> load_widen(const H* p) {
  constexpr std::size_t L = Batch<float>::size;
  if constexpr (std::is_same<H, Eigen::bfloat16>::value) {
    // bf16 is the upper half of a float: a zero-extension and a shift, in 32-bit integer lanes.
    alignas(64) std::uint32_t w[L];
    for (std::size_t i = 0; i < L; ++i) w[i] = bits16(p[i]);
    return reinterpret<float>(Batch<std::uint32_t>::load_aligned(w) << 16);
  } else {
    alignas(64) float f[L];
    for (std::size_t i = 0; i < L; ++i) f[i] = to_float(p[i]);
    return Batch<float>::load_aligned(f);
  }
}

/// The kLanes<float> lanes of v rounded to H (to nearest even, torch's NaN) and stored at p (any alignment).
template <class H>
inline void store_narrow(H* p, const Batch<float>& v) {
  constexpr std::size_t L = Batch<float>::size;
  if constexpr (std::is_same<H, Eigen::bfloat16>::value) {
    // Round to nearest even on the bits: add 0x7FFF plus the lowest kept bit, keep the upper half. A NaN is
    // replaced (the addition could carry its payload into the sign or turn it into inf).
    using U = Batch<std::uint32_t>;
    const U x = reinterpret<std::uint32_t>(v);
    const U r = (x + U(0x7FFFu) + ((x >> 16) & U(1u))) >> 16;
    // NaN lanes (|x| > 0x7F800000) to all ones, without an integer select (xsimd 8.1's AVX-512BW one does not
    // compile at -O0): the difference 0x7F800000 - |x| is negative exactly there.
    const U nan = U(0u) - ((U(0x7F800000u) - (x & U(0x7FFFFFFFu))) >> 31);
    const U out = r | (nan & U(std::uint32_t(kBf16NaN)));
    alignas(64) std::uint32_t w[L];
    out.store_aligned(w);
    for (std::size_t i = 0; i < L; ++i) p[i] = from_bits16<H>(std::uint16_t(w[i]));
  } else {
    alignas(64) float f[L];
    v.store_aligned(f);
    for (std::size_t i = 0; i < L; ++i) p[i] = from_float<H>(f[i]);
  }
}

/// bf16 pairs in 32-bit lanes (element 2i in the low half, 2i + 1 in the high half, as vdpbf16ps reads them): the
/// even elements as floats (exact).
inline Batch<float> bf16_even(const Batch<std::uint32_t>& pairs) { return reinterpret<float>(pairs << 16); }
/// The odd elements as floats (exact).
inline Batch<float> bf16_odd(const Batch<std::uint32_t>& pairs) {
  return reinterpret<float>(pairs & Batch<std::uint32_t>(0xFFFF0000u));
}

/// False: no instruction does dot_bf16_pairs in one step here (x86.hpp sets it where AVX512-BF16 does).
constexpr bool kNativeBf16Dot = false;
/// False: kernels widen bf16 to float when packing and use float FMAs (x86.hpp: where vdpbf16ps is fast).
constexpr bool kPreferBf16Dot = false;

/// acc + a_odd b_odd, rounded, then + a_even b_even, rounded, lane by lane (a, b: bf16 pairs as above; the
/// products are exact in float). That is vdpbf16ps's order and rounding, measured on Zen4 over 1.6 M random
/// normal lanes (the instruction also flushes subnormal inputs and results to zero, which this does not).
inline Batch<float> dot_bf16_pairs(const Batch<float>& acc, const Batch<std::uint32_t>& a,
                                   const Batch<std::uint32_t>& b) {
  return fmadd<float>(bf16_even(a), bf16_even(b), fmadd<float>(bf16_odd(a), bf16_odd(b), acc));
}

/// bf16 pairs of two float registers, in dot_bf16_pairs' layout: lane i = bf16(lo_i) | bf16(hi_i) << 16, each
/// rounded to nearest even after a subnormal float is flushed to a zero of its sign (vcvtne2ps2bf16's rule; a
/// normal float never rounds to a subnormal bf16, and a finite one above the largest bf16 rounds to inf). Not for
/// NaN inputs: the attention weights it packs are never NaN.
inline Batch<std::uint32_t> round_bf16_pairs(const Batch<float>& lo, const Batch<float>& hi) {
  using U = Batch<std::uint32_t>;
  const auto rounded = [](const Batch<float>& x) {
    U u = reinterpret<std::uint32_t>(x);
    u = xsimd::select((u & U(0x7FFFFFFFu)) < U(0x00800000u), u & U(0x80000000u), u);
    return u + U(0x7FFFu) + ((u >> 16) & U(1u));
  };
  return (rounded(lo) >> 16) | (rounded(hi) & U(0xFFFF0000u));
}

/// v stored at p, which is aligned to the register's size. An ordinary aligned store here; x86.hpp's stores it
/// non-temporally (past the caches), for outputs too large to stay in cache.
template <class T>
inline void store_stream(T* p, const Batch<T>& v) {
  v.store_aligned(p);
}

/// Orders the store_stream stores before the stores that follow; nothing to order for ordinary stores.
inline void stream_fence() {}

}  // namespace kexue::detail::generic
