// SPDX-License-Identifier: MIT
#pragma once
// The only file besides detail/simd_*.hpp that talks to xsimd. It pins the architecture (the best one the
// compiler was told it may use, e.g. fma3<avx2> under -march=native or -mavx2 -mfma) and shims the few
// calls that differ between xsimd 8.1 (Debian 12) and 9.x-14.x (what FetchContent users get).

// GCC 12's AVX-512 intrinsics (vmaxps, extracts) pass an undefined register as the masked-off source, which its
// -Wmaybe-uninitialized flags wherever xsimd's AVX-512 kernels are inlined (a GCC false positive). Silenced for
// these headers only: the intrinsics header is included here first, so the pragma's range covers its lines, and
// warnings in kexue's own code stay on.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include <immintrin.h>
#endif
#include <xsimd/xsimd.hpp>
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include <cstddef>
#include <cstdint>
#include <cstring>

// For a small helper that takes an array of registers: called out of line, GCC 12 passes the array through memory
// in 16-byte pieces and reloads each as a whole register, a store-forwarding stall per register (measured: a
// quarter of the decoding step's time in reduce_add_lanes).
#if defined(__GNUC__) || defined(__clang__)
#define KEXUE_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define KEXUE_ALWAYS_INLINE inline
#endif

namespace kexue {
using Index = std::ptrdiff_t;  // the same alias as core.hpp, which includes this file
}  // namespace kexue

namespace kexue::detail {

using Arch = xsimd::default_arch;
template <class T>
using Batch = xsimd::batch<T, Arch>;
template <class T>
using BatchBool = xsimd::batch_bool<T, Arch>;

/// Lanes of one register for T (8 floats / 4 doubles on AVX2).
template <class T>
constexpr Index kLanes = static_cast<Index>(Batch<T>::size);

/// Vector registers the compiler may allocate: 32 with AVX-512 (zmm0-31) and on ARM64 (v0-v31), 16 with SSE and
/// AVX2. Register-blocked micro-kernels size their accumulator blocks from it.
constexpr int kVectorRegisters =
#if defined(__AVX512F__) || defined(__aarch64__)
    32;
#else
    16;
#endif

/// A std::vector whose data start on a 64-byte boundary: scratch that SIMD code loads whole registers from. With
/// 64-byte (AVX-512) registers, a load from a 16-byte-aligned heap block would straddle two cache lines every time.
template <class T>
using AlignedVector = std::vector<T, xsimd::aligned_allocator<T, 64>>;

/// True when the target has a fused multiply-add (FMA3, AVX-512, ARM64 NEON), false otherwise (x86-64 baseline
/// SSE2, AVX without FMA). Then detail::fmadd (arch/ops.hpp), which the kernels use, rounds once, and madd() below
/// (bitwise references, scalar tails that must match a vector lane) follows the same rule. xsimd 8.1's own fma is
/// fused on FMA3 and NEON but is a multiply and an add on AVX-512, fused there only where the compiler contracts
/// it (GCC at -O1 and above); dot() and axpy() below still use it.
constexpr bool kFusedFma =
#if defined(__FMA__) || defined(__AVX512F__) || defined(__ARM_FEATURE_FMA)
    true;
#else
    false;
#endif

/// a * b + c with the rounding xsimd::fma has on this target (see kFusedFma).
template <class T>
inline T madd(T a, T b, T c) {
  if constexpr (kFusedFma) {
    return std::fma(a, b, c);
  } else {
    return a * b + c;
  }
}

/// Name of the instruction set the kernels were compiled for ("fma3+avx2", "sse2", ...).
inline const char* simd_arch_name() { return Arch::name(); }

template <class T>
inline T reduce_add(const Batch<T>& b) {
#if XSIMD_VERSION_MAJOR >= 9
  return xsimd::reduce_add(b);
#else
  return xsimd::hadd(b);
#endif
}

template <class T>
inline T reduce_max(const Batch<T>& b) {
#if XSIMD_VERSION_MAJOR >= 9
  return xsimd::reduce_max(b);
#else
  alignas(64) T lanes[Batch<T>::size];
  b.store_unaligned(lanes);
  T m = lanes[0];
  for (std::size_t i = 1; i < Batch<T>::size; ++i) m = lanes[i] > m ? lanes[i] : m;
  return m;
#endif
}

template <class T>
inline Batch<T> load(const T* p) {
  return Batch<T>::load_unaligned(p);
}
template <class T>
inline void store(T* p, const Batch<T>& b) {
  b.store_unaligned(p);
}

// ---- row helpers: pointer + length, SIMD body, scalar tail ------------------------------------------------

/// sum_i a[i] * b[i]. Four independent accumulators: an FMA has 4-5 cycles of latency and two issue ports,
/// so one accumulator would run at a quarter of peak.
template <class T>
inline T dot(const T* a, const T* b, Index n) {
  constexpr Index L = kLanes<T>;
  Batch<T> s0(T(0)), s1(T(0)), s2(T(0)), s3(T(0));
  Index i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    s0 = xsimd::fma(load(a + i), load(b + i), s0);
    s1 = xsimd::fma(load(a + i + L), load(b + i + L), s1);
    s2 = xsimd::fma(load(a + i + 2 * L), load(b + i + 2 * L), s2);
    s3 = xsimd::fma(load(a + i + 3 * L), load(b + i + 3 * L), s3);
  }
  for (; i + L <= n; i += L) s0 = xsimd::fma(load(a + i), load(b + i), s0);
  T s = reduce_add<T>((s0 + s1) + (s2 + s3));
  for (; i < n; ++i) s = madd(a[i], b[i], s);  // explicit rounding: the same bits whatever the compiler contracts
  return s;
}

/// y[i] += alpha * x[i].
template <class T>
inline void axpy(T alpha, const T* x, T* y, Index n) {
  constexpr Index L = kLanes<T>;
  const Batch<T> va(alpha);
  Index i = 0;
  for (; i + L <= n; i += L) store(y + i, xsimd::fma(va, load(x + i), load(y + i)));
  for (; i < n; ++i) y[i] = madd(alpha, x[i], y[i]);
}

/// x[i] *= alpha.
template <class T>
inline void scale(T alpha, T* x, Index n) {
  constexpr Index L = kLanes<T>;
  const Batch<T> va(alpha);
  Index i = 0;
  for (; i + L <= n; i += L) store(x + i, load(x + i) * va);
  for (; i < n; ++i) x[i] *= alpha;
}

/// max_i x[i]; -inf for n == 0. NaN entries are ignored (a compare and a select: xsimd::max's NaN rule differs
/// between x86 and ARM64).
template <class T>
inline T row_max(const T* x, Index n) {
  constexpr Index L = kLanes<T>;
  const T ninf = -std::numeric_limits<T>::infinity();
  Batch<T> m0(ninf), m1(ninf);
  const auto keep_max = [](const Batch<T>& m, const Batch<T>& v) { return xsimd::select(m < v, v, m); };
  Index i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    m0 = keep_max(m0, load(x + i));
    m1 = keep_max(m1, load(x + i + L));
  }
  for (; i + L <= n; i += L) m0 = keep_max(m0, load(x + i));
  T m = reduce_max<T>(xsimd::max(m0, m1));
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

/// sum_i x[i].
template <class T>
inline T row_sum(const T* x, Index n) {
  constexpr Index L = kLanes<T>;
  Batch<T> s0(T(0)), s1(T(0));
  Index i = 0;
  for (; i + 2 * L <= n; i += 2 * L) {
    s0 += load(x + i);
    s1 += load(x + i + L);
  }
  for (; i + L <= n; i += L) s0 += load(x + i);
  T s = reduce_add<T>(s0 + s1);
  for (; i < n; ++i) s += x[i];
  return s;
}

/// Below this argument exp underflows to 0 in T. Arguments are clamped to it first: xsimd 8.1's double exp
/// converts its argument to an integer in scalar code, which is undefined behaviour for -inf or -1e30
/// (found by fuzz/fuzz_core.cpp).
template <class T>
constexpr T kExpUnderflow = std::is_same<T, float>::value ? T(-110) : T(-760);

/// exp(x) for x <= 0 (softmax arguments after subtracting the max); -inf, huge negatives and NaN give 0.
/// The argument is clamped to [kExpUnderflow, 0], a NaN to kExpUnderflow (a compare and a select: xsimd::max
/// would keep the NaN on ARM64), so no NaN or -inf reaches xsimd's integer conversion.
template <class T>
inline Batch<T> exp_nonpositive(const Batch<T>& x) {
  const Batch<T> lo(kExpUnderflow<T>);
  return xsimd::exp(xsimd::min(xsimd::select(lo < x, x, lo), Batch<T>(T(0))));
}

/// The scalar exp_nonpositive (tails): a NaN x gives 0 as in the vector lanes.
template <class T>
inline T exp_nonpositive_scalar(T x) {
  return x == x ? std::exp(x) : T(0);
}

/// x[i] = exp(x[i] - shift), returning the sum of the new values. exp(-inf) = 0. Requires x[i] <= shift.
template <class T>
inline T exp_shift_sum(T* x, T shift, Index n) {
  constexpr Index L = kLanes<T>;
  const Batch<T> vs(shift);
  Batch<T> s0(T(0));
  Index i = 0;
  for (; i + L <= n; i += L) {
    const Batch<T> e = exp_nonpositive(load(x + i) - vs);
    store(x + i, e);
    s0 += e;
  }
  T s = reduce_add<T>(s0);
  for (; i < n; ++i) {
    x[i] = exp_nonpositive_scalar(x[i] - shift);
    s += x[i];
  }
  return s;
}

/// In-place softmax of one row. A row with no finite maximum (empty, or every entry -inf or NaN) becomes zeros:
/// it has no visible key, and exp(-inf - (-inf)) would be NaN. A NaN entry gets 0 (as in the attention kernel).
template <class T>
inline void softmax_row(T* x, Index n) {
  const T m = row_max(x, n);
  if (!(m > -std::numeric_limits<T>::infinity())) {
    std::fill(x, x + n, T(0));
    return;
  }
  if (m == std::numeric_limits<T>::infinity()) {
    // +inf logits share the whole mass; everything else gets 0.
    Index count = 0;
    for (Index i = 0; i < n; ++i) count += x[i] == m;
    for (Index i = 0; i < n; ++i) x[i] = x[i] == m ? T(1) / T(count) : T(0);
    return;
  }
  const T s = exp_shift_sum(x, m, n);
  scale(T(1) / s, x, n);
}

}  // namespace kexue::detail
