// SPDX-License-Identifier: MIT
#pragma once
// The named lane helpers kernels call: each forwards to the per-architecture version (arch/x86.hpp,
// arch/neon.hpp) where one exists for the register width in use, else to the portable one (arch/generic.hpp).
// This is the one place that picks an architecture; kernels stay written once over Batch<T>.
//
//   swap_adjacent(v)          [v1, v0, v3, v2, ...]
//   load_dup_pairs(p)         [p0, p0, p1, p1, ...] from kLanes/2 values
//   fmadd(a, b, c)            a b + c rounded as madd(): once where kFusedFma (xsimd 8.1's fma on AVX-512 is a
//                             multiply and an add; use these, not xsimd::fma, where the rounding matters)
//   fnmadd(a, b, c)           c - a b;  fmsub(a, b, c): a b - c (same rounding rule)
//   sqrt_ieee(v)              correctly rounded (xsimd 8.1's float sqrt on ARM64 is an approximation)
//   fmaddsub(a, b, c)         a b - c in even lanes, a b + c in odd lanes (same rounding rule)
//   mulhilo_u32(a, m, hi, lo) high and low words of the 32x32->64 products
//   reinterpret<To>(v)        the same bits as another 32-bit lane type
//   store_halves(lo, hi, v)   lanes [0, L/2) at lo, [L/2, L) at hi; load_halves the reverse
//   opaque(v)                 v, but a product feeding it cannot be contracted into an FMA
//   at_least(x, lo)           lo < x ? x : lo (a NaN x gives lo: the logit clamps and relus, the same on every ISA)
//   reduce_add_lanes(t)       lane u = reduce_add(t[u]) for the kLanes batches t[0..L), bit for bit
//   load_widen(p)             kLanes<float> Eigen::half / Eigen::bfloat16 values at p as a Batch<float> (exact)
//   store_narrow(p, v)        a Batch<float> rounded to nearest even into kLanes<float> 16-bit values at p, NaN
//                             as torch writes it (arch/generic.hpp: kBf16NaN, kHalfQuietNaN)
//   to_float(h), from_float<H>(x)   the same conversions for one value (tails, scalar references)
//   dot_bf16_pairs(acc, a, b) acc + a_odd b_odd + a_even b_even per float lane, a and b bf16 pairs in 32-bit lanes
//                             (vdpbf16ps where kNativeBf16Dot, else widened + two fmadds: the same bits for
//                             normal numbers); kPreferBf16Dot: whether kernels should use it (x86.hpp: not where
//                             it is slower than widening); bf16_even(p), bf16_odd(p): the pairs' halves as floats
//   round_bf16_pairs(lo, hi)  two float registers rounded to nearest even into bf16 pairs (subnormals flushed to
//                             zero, vcvtne2ps2bf16's rule, which x86.hpp uses under AVX512-BF16)
//   store_stream(p, v)        v at p (aligned to the register) past the caches where the ISA has a non-temporal
//                             store (x86 movntps / movntpd), else an ordinary store; stream_fence() after the
//                             last one (x86 sfence) orders them before later stores
//   load_as<T>(p), store_as(p, v), as_compute<T>(s), round_to<S>(x)
//                             kernels over a compute type T (float, double) whose data are stored as S (T itself,
//                             or a 16-bit type): plain loads / stores when S == T, else widen on load and round
//                             once on store (double lanes convert one by one: the float table is the fast path)

#include "kexue/detail/arch/generic.hpp"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include "kexue/detail/arch/x86.hpp"
#define KEXUE_ARCH_NS x86
#elif defined(__aarch64__)
#include "kexue/detail/arch/neon.hpp"
#define KEXUE_ARCH_NS neon
#else
#define KEXUE_ARCH_NS generic
#endif

namespace kexue::detail {

namespace arch = KEXUE_ARCH_NS;

template <class T>
inline Batch<T> swap_adjacent(const Batch<T>& v) {
  return arch::swap_adjacent<T>(v);
}
template <class T>
inline Batch<T> load_dup_pairs(const T* p) {
  return arch::load_dup_pairs<T>(p);
}
template <class T>
inline Batch<T> fmadd(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  return arch::fmadd<T>(a, b, c);
}
template <class T>
inline Batch<T> fnmadd(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  return arch::fnmadd<T>(a, b, c);
}
template <class T>
inline Batch<T> fmsub(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  return arch::fmsub<T>(a, b, c);
}
template <class T>
inline Batch<T> sqrt_ieee(const Batch<T>& v) {
  return arch::sqrt_ieee<T>(v);
}
template <class T>
inline Batch<T> fmaddsub(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  return arch::fmaddsub<T>(a, b, c);
}
inline void mulhilo_u32(const Batch<std::uint32_t>& a, const Batch<std::uint32_t>& m, Batch<std::uint32_t>* hi,
                        Batch<std::uint32_t>* lo) {
  arch::mulhilo_u32(a, m, hi, lo);
}
template <class To, class From>
inline Batch<To> reinterpret(const Batch<From>& v) {
  return arch::reinterpret<To, From>(v);
}
template <class T>
inline void store_halves(T* lo, T* hi, const Batch<T>& v) {
  arch::store_halves<T>(lo, hi, v);
}
template <class T>
inline Batch<T> load_halves(const T* lo, const T* hi) {
  return arch::load_halves<T>(lo, hi);
}
template <class T>
inline Batch<T> opaque(const Batch<T>& v) {
  return arch::opaque<T>(v);
}

template <class T>
inline Batch<T> at_least(const Batch<T>& x, const Batch<T>& lo) {
  return arch::at_least<T>(x, lo);
}

template <class T>
KEXUE_ALWAYS_INLINE Batch<T> reduce_add_lanes(const Batch<T>* t) {
  return arch::reduce_add_lanes<T>(t);
}

template <class T>
inline void store_stream(T* p, const Batch<T>& v) {
  arch::store_stream<T>(p, v);
}
inline void stream_fence() { arch::stream_fence(); }

template <class H>
inline Batch<float> load_widen(const H* p) {
  static_assert(kIs16Bit<H>, "kexue: load_widen reads Eigen::half or Eigen::bfloat16");
  return arch::load_widen<std::remove_const_t<H>>(p);
}
template <class H>
inline void store_narrow(H* p, const Batch<float>& v) {
  static_assert(kIs16Bit<H>, "kexue: store_narrow writes Eigen::half or Eigen::bfloat16");
  arch::store_narrow<H>(p, v);
}
template <class H>
inline float to_float(H h) {
  return generic::to_float<H>(h);
}
template <class H>
inline H from_float(float x) {
  return generic::from_float<H>(x);
}


constexpr bool kNativeBf16Dot = arch::kNativeBf16Dot;
constexpr bool kPreferBf16Dot = arch::kPreferBf16Dot;
inline Batch<float> dot_bf16_pairs(const Batch<float>& acc, const Batch<std::uint32_t>& a,
                                   const Batch<std::uint32_t>& b) {
  return arch::dot_bf16_pairs(acc, a, b);
}
inline Batch<std::uint32_t> round_bf16_pairs(const Batch<float>& lo, const Batch<float>& hi) {
  return arch::round_bf16_pairs(lo, hi);
}
inline Batch<float> bf16_even(const Batch<std::uint32_t>& pairs) { return generic::bf16_even(pairs); }
inline Batch<float> bf16_odd(const Batch<std::uint32_t>& pairs) { return generic::bf16_odd(pairs); }

template <class T, class S>
inline Batch<T> load_as(const S* p) {
  if constexpr (std::is_same<S, T>::value) {
    return load(p);
  } else if constexpr (std::is_same<T, float>::value) {
    return load_widen<S>(p);
  } else {
    static_assert(kIs16Bit<S>, "kexue: load_as reads T or a 16-bit type");
    alignas(64) T lanes[Batch<T>::size];
    for (std::size_t i = 0; i < Batch<T>::size; ++i) lanes[i] = T(to_float<S>(p[i]));
    return Batch<T>::load_aligned(lanes);
  }
}
template <class S, class T>
inline void store_as(S* p, const Batch<T>& v) {
  if constexpr (std::is_same<S, T>::value) {
    store(p, v);
  } else if constexpr (std::is_same<T, float>::value) {
    store_narrow<S>(p, v);
  } else {
    static_assert(kIs16Bit<S>, "kexue: store_as writes T or a 16-bit type");
    alignas(64) T lanes[Batch<T>::size];
    v.store_aligned(lanes);
    for (std::size_t i = 0; i < Batch<T>::size; ++i) p[i] = generic::from_double<S>(double(lanes[i]));
  }
}
template <class T, class S>
inline T as_compute(S x) {
  if constexpr (std::is_same<S, T>::value) {
    return x;
  } else {
    return T(to_float<S>(x));
  }
}
template <class S, class T>
inline S round_to(T x) {
  if constexpr (std::is_same<S, T>::value) {
    return x;
  } else if constexpr (std::is_same<T, float>::value) {
    return from_float<S>(x);
  } else {
    return generic::from_double<S>(double(x));
  }
}

}  // namespace kexue::detail

#undef KEXUE_ARCH_NS
