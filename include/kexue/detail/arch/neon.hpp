// SPDX-License-Identifier: MIT
#pragma once
// ARM64 (NEON, 4 floats / 2 doubles per register) specialisations of the named lane helpers of
// arch/generic.hpp, each falling back to the generic version for a register it does not know (an SVE build of a
// later xsimd, for example). tests/detail/test_arch_lanes.cpp compares every one with the generic version, bit for
// bit (cross-compiled and run under qemu-aarch64 here). Why each exists: vrev64q / vzip1q / vmull_u32 are one
// instruction where the generic version goes through memory; load_widen / store_narrow convert fp16 with
// fcvtl / fcvtn (ARMv8's base NEON, exact and round to nearest even under Linux's default FPCR) and bf16 with
// shifts (vshll / vshrn), where the generic version converts lane by lane.

#include <arm_neon.h>

#include <cstdint>
#include <type_traits>

#include "kexue/detail/arch/generic.hpp"

namespace kexue::detail::neon {

template <class T>
constexpr std::size_t kRegBytes = sizeof(typename Batch<T>::register_type);

template <class T>
inline Batch<T> swap_adjacent(const Batch<T>& v) {
  if constexpr (kRegBytes<T> == 16 && std::is_same<T, float>::value) {
    return Batch<T>(vrev64q_f32(v));
  } else if constexpr (kRegBytes<T> == 16 && std::is_same<T, double>::value) {
    return Batch<T>(vextq_f64(v, v, 1));
  } else {
    return generic::swap_adjacent<T>(v);
  }
}

template <class T>
inline Batch<T> load_dup_pairs(const T* p) {
  if constexpr (kRegBytes<T> == 16 && std::is_same<T, float>::value) {
    const float32x4_t b = vcombine_f32(vld1_f32(p), vdup_n_f32(0.0f));  // p0 p1 _ _
    return Batch<T>(vzip1q_f32(b, b));                                  // p0 p0 p1 p1
  } else if constexpr (kRegBytes<T> == 16 && std::is_same<T, double>::value) {
    return Batch<T>(vld1q_dup_f64(p));
  } else {
    return generic::load_dup_pairs<T>(p);
  }
}

// a * b + c, c - a * b, a * b - c: one fused instruction each (xsimd 8.1's fnma is a multiply and a subtract).
template <class T>
inline Batch<T> fmadd(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  if constexpr (kRegBytes<T> == 16 && std::is_same<T, float>::value) {
    return Batch<T>(vfmaq_f32(c, a, b));
  } else if constexpr (kRegBytes<T> == 16 && std::is_same<T, double>::value) {
    return Batch<T>(vfmaq_f64(c, a, b));
  } else {
    return generic::fmadd<T>(a, b, c);
  }
}

template <class T>
inline Batch<T> fnmadd(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  if constexpr (kRegBytes<T> == 16 && std::is_same<T, float>::value) {
    return Batch<T>(vfmsq_f32(c, a, b));
  } else if constexpr (kRegBytes<T> == 16 && std::is_same<T, double>::value) {
    return Batch<T>(vfmsq_f64(c, a, b));
  } else {
    return generic::fnmadd<T>(a, b, c);
  }
}

template <class T>
inline Batch<T> fmsub(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  return fmadd<T>(a, b, -c);
}

/// fsqrt on every lane (xsimd 8.1's float sqrt on ARM64 is a reciprocal estimate refined twice: not IEEE).
template <class T>
inline Batch<T> sqrt_ieee(const Batch<T>& v) {
  if constexpr (kRegBytes<T> == 16 && std::is_same<T, float>::value) {
    return Batch<T>(vsqrtq_f32(v));
  } else if constexpr (kRegBytes<T> == 16 && std::is_same<T, double>::value) {
    return Batch<T>(vsqrtq_f64(v));
  } else {
    return generic::sqrt_ieee<T>(v);
  }
}

template <class T>
inline Batch<T> fmaddsub(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  // No fmaddsub instruction: negate the even lanes of c (exact) and use one fused multiply-add, which is
  // what the generic version does through a sign vector in memory.
  if constexpr (kRegBytes<T> == 16 && std::is_same<T, float>::value) {
    const uint32x4_t even_sign = vreinterpretq_u32_u64(vdupq_n_u64(0x80000000ull));
    const float32x4_t nc = vreinterpretq_f32_u32(veorq_u32(vreinterpretq_u32_f32(c), even_sign));
    return Batch<T>(vfmaq_f32(nc, a, b));
  } else if constexpr (kRegBytes<T> == 16 && std::is_same<T, double>::value) {
    const uint64x2_t even_sign = vcombine_u64(vdup_n_u64(0x8000000000000000ull), vdup_n_u64(0));
    const float64x2_t nc = vreinterpretq_f64_u64(veorq_u64(vreinterpretq_u64_f64(c), even_sign));
    return Batch<T>(vfmaq_f64(nc, a, b));
  } else {
    return generic::fmaddsub<T>(a, b, c);
  }
}

// A template only so that the branches for other register widths are discarded unchecked.
template <class U = Batch<std::uint32_t>>
inline void mulhilo_u32(const U& a, const U& m, U* hi, U* lo) {
  if constexpr (sizeof(typename U::register_type) == 16) {
    const uint32x4_t va = a, vm = m;
    const uint64x2_t p01 = vmull_u32(vget_low_u32(va), vget_low_u32(vm));
    const uint64x2_t p23 = vmull_high_u32(va, vm);
    *hi = U(vuzp2q_u32(vreinterpretq_u32_u64(p01), vreinterpretq_u32_u64(p23)));
    *lo = U(vuzp1q_u32(vreinterpretq_u32_u64(p01), vreinterpretq_u32_u64(p23)));
  } else {
    generic::mulhilo_u32(a, m, hi, lo);
  }
}

template <class To, class From>
inline Batch<To> reinterpret(const Batch<From>& v) {
  static_assert(sizeof(To) == 4 && sizeof(From) == 4, "kexue: reinterpret handles 32-bit lanes");
  using RT = typename Batch<To>::register_type;
  using RF = typename Batch<From>::register_type;
  if constexpr (kRegBytes<From> == 16 && std::is_same<RT, float32x4_t>::value && std::is_same<RF, uint32x4_t>::value) {
    return Batch<To>(vreinterpretq_f32_u32(v));
  } else if constexpr (kRegBytes<From> == 16 && std::is_same<RT, float32x4_t>::value &&
                       std::is_same<RF, int32x4_t>::value) {
    return Batch<To>(vreinterpretq_f32_s32(v));
  } else if constexpr (kRegBytes<From> == 16 && std::is_same<RT, uint32x4_t>::value &&
                       std::is_same<RF, float32x4_t>::value) {
    return Batch<To>(vreinterpretq_u32_f32(v));
  } else if constexpr (kRegBytes<From> == 16 && std::is_same<RT, int32x4_t>::value &&
                       std::is_same<RF, float32x4_t>::value) {
    return Batch<To>(vreinterpretq_s32_f32(v));
  } else if constexpr (kRegBytes<From> == 16 && std::is_same<RT, int32x4_t>::value &&
                       std::is_same<RF, uint32x4_t>::value) {
    return Batch<To>(vreinterpretq_s32_u32(v));
  } else if constexpr (kRegBytes<From> == 16 && std::is_same<RT, uint32x4_t>::value &&
                       std::is_same<RF, int32x4_t>::value) {
    return Batch<To>(vreinterpretq_u32_s32(v));
  } else {
    return generic::reinterpret<To>(v);
  }
}

template <class T>
inline void store_halves(T* lo, T* hi, const Batch<T>& v) {
  generic::store_halves<T>(lo, hi, v);  // not on a hot path at 4 lanes: each half is 2 values
}

template <class T>
inline Batch<T> load_halves(const T* lo, const T* hi) {
  return generic::load_halves<T>(lo, hi);
}

// fmax returns NaN for a NaN operand and +0 for (-0, +0): the generic compare and select gives lo < x ? x : lo.
template <class T>
inline Batch<T> at_least(const Batch<T>& x, const Batch<T>& lo) {
  return generic::at_least<T>(x, lo);
}

template <class T>
inline Batch<T> opaque(const Batch<T>& v) {
#if defined(__GNUC__)
  typename Batch<T>::register_type r = v;
  __asm__("" : "+w"(r));
  return Batch<T>(r);
#else
  return generic::opaque<T>(v);
#endif
}

template <class T>
KEXUE_ALWAYS_INLINE Batch<T> reduce_add_lanes(const Batch<T>* t) {
  return generic::reduce_add_lanes<T>(t);
}

/// kLanes<float> halves or bfloat16s at p as floats, exact.
template <class H>
inline Batch<float> load_widen(const H* p) {
  if constexpr (kRegBytes<float> == 16 && std::is_same<H, Eigen::half>::value) {
    return Batch<float>(vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p)))));
  } else if constexpr (kRegBytes<float> == 16) {
    return Batch<float>(vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p)), 16)));
  } else {
    return generic::load_widen<H>(p);
  }
}

/// The lanes of v rounded to H (nearest even, torch's NaN bits) and stored at p.
template <class H>
inline void store_narrow(H* p, const Batch<float>& v) {
  std::uint16_t* out = reinterpret_cast<std::uint16_t*>(p);
  if constexpr (kRegBytes<float> == 16 && std::is_same<H, Eigen::half>::value) {
    // fcvtn keeps a NaN's sign and the top 9 bits of its payload: clear those in the NaN lanes (torch: 0x7E00).
    const uint16x4_t h = vreinterpret_u16_f16(vcvt_f16_f32(v));
    const uint16x4_t nan = vcgt_u16(vand_u16(h, vdup_n_u16(0x7FFF)), vdup_n_u16(0x7C00));
    vst1_u16(out, vbic_u16(h, vand_u16(nan, vdup_n_u16(0x01FF))));
  } else if constexpr (kRegBytes<float> == 16) {
    // Round to nearest even on the bits; a NaN lane becomes all ones (kBf16NaN) before the narrowing shift.
    const uint32x4_t x = vreinterpretq_u32_f32(v);
    const uint32x4_t lsb = vandq_u32(vshrq_n_u32(x, 16), vdupq_n_u32(1));
    uint32x4_t t = vaddq_u32(vaddq_u32(x, vdupq_n_u32(0x7FFF)), lsb);
    t = vorrq_u32(t, vmvnq_u32(vceqq_f32(v, v)));
    vst1_u16(out, vshrn_n_u32(t, 16));
  } else {
    generic::store_narrow<H>(p, v);
  }
}

/// ARMv8.0 NEON has no bf16 dot product (BFDOT needs the +bf16 extension): the generic widening version.
constexpr bool kNativeBf16Dot = false;
constexpr bool kPreferBf16Dot = false;
inline Batch<float> dot_bf16_pairs(const Batch<float>& acc, const Batch<std::uint32_t>& a,
                                   const Batch<std::uint32_t>& b) {
  return fmadd<float>(generic::bf16_even(a), generic::bf16_even(b),
                      fmadd<float>(generic::bf16_odd(a), generic::bf16_odd(b), acc));
}

/// ARMv8.0 NEON has no bf16 conversion (BFCVTN needs +bf16): the generic integer rounding.
inline Batch<std::uint32_t> round_bf16_pairs(const Batch<float>& lo, const Batch<float>& hi) {
  return generic::round_bf16_pairs(lo, hi);
}

/// ARMv8 has STNP (a non-temporal pair store), but no measurement here: ordinary stores, as generic.
template <class T>
inline void store_stream(T* p, const Batch<T>& v) {
  generic::store_stream<T>(p, v);
}
inline void stream_fence() { generic::stream_fence(); }

}  // namespace kexue::detail::neon
