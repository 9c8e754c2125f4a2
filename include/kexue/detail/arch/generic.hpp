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

namespace kexue::detail::generic {

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
inline Batch<T> reduce_add_lanes(const Batch<T>* t) {
  constexpr std::size_t L = Batch<T>::size;
  alignas(64) T lanes[L];
  for (std::size_t u = 0; u < L; ++u) lanes[u] = reduce_add<T>(t[u]);
  return Batch<T>::load_aligned(lanes);
}

}  // namespace kexue::detail::generic
