// SPDX-License-Identifier: MIT
#pragma once
// SIMD row kernels of RoPE. The table gives, for one position, the cos c_i and sin s_i of each pair's
// angle (r/2 values each, pair order). A pair (x_a, x_b) becomes (x_a c - x_b s, x_b c + x_a s), with
// (a, b) = (2i, 2i+1) for Interleaved and (i, i + r/2) for Half. Half needs no shuffle: the partner of a
// vector of the low half is the vector r/2 further on. Interleaved duplicates each c_i / s_i into both
// lanes of its pair in a register (broadcast + in-lane permute), swaps adjacent lanes of x and combines
// with vfmaddsub. Those shuffles are the operations xsimd 8.1 and 14 spell differently (batch_constant),
// so they are written with intrinsics here for the registers the library can be compiled for, with a
// portable fallback. src and dst may be the same row (in place): every vector is loaded before the store
// that could overwrite it, and pairs never straddle a vector.

#include <cmath>
#include <cstring>
#include <type_traits>

#if defined(__SSE2__) || defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kexue/detail/simd.hpp"

namespace kexue::detail {

/// [v0, v1, v2, v3, ...] -> [v1, v0, v3, v2, ...].
template <class T>
inline Batch<T> swap_adjacent(const Batch<T>& v) {
  // Dispatch on register width and scalar (std::is_same on __m256 & co. trips -Wignored-attributes).
  constexpr std::size_t kBytes = sizeof(typename Batch<T>::register_type);
  constexpr bool kFloat = std::is_same<T, float>::value;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kFloat) {
    return Batch<T>(_mm512_permute_ps(v, 0xB1));
  } else if constexpr (kBytes == 64 && !kFloat) {
    return Batch<T>(_mm512_permute_pd(v, 0x55));
  } else
#endif
#if defined(__AVX__)
      if constexpr (kBytes == 32 && kFloat) {
    return Batch<T>(_mm256_permute_ps(v, 0xB1));
  } else if constexpr (kBytes == 32 && !kFloat) {
    return Batch<T>(_mm256_permute_pd(v, 0x5));
  } else
#endif
#if defined(__SSE2__)
      if constexpr (kBytes == 16 && kFloat) {
    return Batch<T>(_mm_shuffle_ps(v, v, 0xB1));
  } else if constexpr (kBytes == 16 && !kFloat) {
    return Batch<T>(_mm_shuffle_pd(v, v, 1));
  } else
#endif
  {
    constexpr Index L = kLanes<T>;
    alignas(64) T lanes[L];
    v.store_unaligned(lanes);
    for (Index i = 0; i < L; i += 2) {
      const T t = lanes[i];
      lanes[i] = lanes[i + 1];
      lanes[i + 1] = t;
    }
    return Batch<T>::load_unaligned(lanes);
  }
}

/// [p0, p0, p1, p1, ...] from kLanes/2 consecutive values at p: the per-pair cos or sin of the compact table
/// row expanded to the interleaved layout in a register (one broadcast load + one in-lane permute on AVX),
/// so the table in memory is half as large as a full-width interleaved row.
template <class T>
inline Batch<T> load_dup_pairs(const T* p) {
  constexpr std::size_t kBytes = sizeof(typename Batch<T>::register_type);
  constexpr bool kFloat = std::is_same<T, float>::value;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kFloat) {
    const __m512i idx = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    return Batch<T>(_mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps(0x00FF, p)));
  } else if constexpr (kBytes == 64 && !kFloat) {
    const __m512i idx = _mm512_setr_epi64(0, 0, 1, 1, 2, 2, 3, 3);
    return Batch<T>(_mm512_permutexvar_pd(idx, _mm512_maskz_loadu_pd(0x0F, p)));
  } else
#endif
#if defined(__AVX__)
      if constexpr (kBytes == 32 && kFloat) {
    // Both 128-bit lanes hold p0..p3; vpermilps picks within each lane: [0 0 1 1 | 2 2 3 3].
    const __m256 b = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(p));
    return Batch<T>(_mm256_permutevar_ps(b, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)));
  } else if constexpr (kBytes == 32 && !kFloat) {
    const __m256d b = _mm256_broadcast_pd(reinterpret_cast<const __m128d*>(p));
    return Batch<T>(_mm256_permute_pd(b, 0xC));
  } else
#endif
#if defined(__SSE2__)
      if constexpr (kBytes == 16 && kFloat) {
    const __m128 b = _mm_castpd_ps(_mm_load_sd(reinterpret_cast<const double*>(p)));
    return Batch<T>(_mm_unpacklo_ps(b, b));
  } else if constexpr (kBytes == 16 && !kFloat) {
    return Batch<T>(_mm_load1_pd(p));
  } else
#endif
  {
    constexpr Index L = kLanes<T>;
    alignas(64) T lanes[L];
    for (Index i = 0; i < L; ++i) lanes[i] = p[i / 2];
    return Batch<T>::load_unaligned(lanes);
  }
}

/// a * b - c in even lanes, a * b + c in odd lanes (vfmaddsub): the interleaved rotation with unsigned sin,
/// x' = fmaddsub(x, cos, swap(x) * sin).
template <class T>
inline Batch<T> fmaddsub(const Batch<T>& a, const Batch<T>& b, const Batch<T>& c) {
  constexpr std::size_t kBytes = sizeof(typename Batch<T>::register_type);
  constexpr bool kFloat = std::is_same<T, float>::value;
#if defined(__AVX512F__)
  if constexpr (kBytes == 64 && kFloat) {
    return Batch<T>(_mm512_fmaddsub_ps(a, b, c));
  } else if constexpr (kBytes == 64 && !kFloat) {
    return Batch<T>(_mm512_fmaddsub_pd(a, b, c));
  } else
#endif
#if defined(__FMA__)
      if constexpr (kBytes == 32 && kFloat) {
    return Batch<T>(_mm256_fmaddsub_ps(a, b, c));
  } else if constexpr (kBytes == 32 && !kFloat) {
    return Batch<T>(_mm256_fmaddsub_pd(a, b, c));
  } else if constexpr (kBytes == 16 && kFloat) {
    return Batch<T>(_mm_fmaddsub_ps(a, b, c));
  } else if constexpr (kBytes == 16 && !kFloat) {
    return Batch<T>(_mm_fmaddsub_pd(a, b, c));
  } else
#endif
  {
    (void)kBytes;
    (void)kFloat;
    constexpr Index L = kLanes<T>;
    alignas(64) T sign[L];
    for (Index i = 0; i < L; ++i) sign[i] = i % 2 == 0 ? T(-1) : T(1);
    return xsimd::fma(a, b, c * Batch<T>::load_unaligned(sign));
  }
}

/// a * b + c for the scalar tails, rounded exactly as the vector lanes are (one rounding where the vector
/// code uses an FMA), so a row's result does not depend on where the last full vector ends and does not
/// change with the compiler's freedom to contract a * b + c.
template <class T>
inline T mul_add(T a, T b, T c) {
#if defined(__FMA__) || defined(__AVX512F__)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// ---- Interleaved: pairs (2i, 2i+1) ------------------------------------------------------------------------
// `bias` may be null (no bias). Vectors start at multiples of L (even), so no pair straddles two vectors.

// cp and sp are the compact per-pair cos and sin (r/2 values each, unsigned): half the table bytes of a
// full-width row, which matters because the table streams from L2/L3 once per head.

template <class T>
inline void rope_row_interleaved(const T* src, T* dst, const T* cp, const T* sp, const T* bias, Index r) {
  constexpr Index L = kLanes<T>;
  Index j = 0;
  if (bias) {
    for (; j + L <= r; j += L) {
      const Batch<T> x = load(src + j) + load(bias + j);
      store(dst + j, fmaddsub<T>(x, load_dup_pairs(cp + j / 2), swap_adjacent<T>(x) * load_dup_pairs(sp + j / 2)));
    }
  } else {
    // Two vectors per iteration: the work per vector is a short dependency chain (permutes, mul, fmaddsub),
    // and two independent chains hide its latency behind the loads.
    for (; j + 2 * L <= r; j += 2 * L) {
      const Batch<T> x0 = load(src + j), x1 = load(src + j + L);
      const Batch<T> y0 =
          fmaddsub<T>(x0, load_dup_pairs(cp + j / 2), swap_adjacent<T>(x0) * load_dup_pairs(sp + j / 2));
      const Batch<T> y1 = fmaddsub<T>(x1, load_dup_pairs(cp + (j + L) / 2),
                                      swap_adjacent<T>(x1) * load_dup_pairs(sp + (j + L) / 2));
      store(dst + j, y0);
      store(dst + j + L, y1);
    }
    for (; j + L <= r; j += L) {
      const Batch<T> x = load(src + j);
      store(dst + j, fmaddsub<T>(x, load_dup_pairs(cp + j / 2), swap_adjacent<T>(x) * load_dup_pairs(sp + j / 2)));
    }
  }
  for (; j < r; j += 2) {
    const T a = src[j] + (bias ? bias[j] : T(0)), b = src[j + 1] + (bias ? bias[j + 1] : T(0));
    const T c = cp[j / 2], s = sp[j / 2];
    dst[j] = mul_add(a, c, -(b * s));
    dst[j + 1] = mul_add(b, c, a * s);
  }
}

/// q and k rows at the same position with one load of the table row (the batched q/k form).
template <class T>
inline void rope_rows2_interleaved(T* q, T* k, const T* cp, const T* sp, Index r) {
  constexpr Index L = kLanes<T>;
  Index j = 0;
  for (; j + L <= r; j += L) {
    const Batch<T> c = load_dup_pairs(cp + j / 2), s = load_dup_pairs(sp + j / 2);
    const Batch<T> a = load(q + j), b = load(k + j);
    store(q + j, fmaddsub<T>(a, c, swap_adjacent<T>(a) * s));
    store(k + j, fmaddsub<T>(b, c, swap_adjacent<T>(b) * s));
  }
  for (; j < r; j += 2) {
    const T c = cp[j / 2], s = sp[j / 2];
    const T a0 = q[j], a1 = q[j + 1], b0 = k[j], b1 = k[j + 1];
    q[j] = mul_add(a0, c, -(a1 * s));
    q[j + 1] = mul_add(a1, c, a0 * s);
    k[j] = mul_add(b0, c, -(b1 * s));
    k[j + 1] = mul_add(b1, c, b0 * s);
  }
}

/// rope_rows2_interleaved with biases added before the rotation (the batched q/k RoPE + bias form): per row, the
/// same operations in the same order as rope_row_interleaved's bias path, so the results are its bits.
template <class T>
inline void rope_rows2_bias_interleaved(T* q, T* k, const T* qb, const T* kb, const T* cp, const T* sp, Index r) {
  constexpr Index L = kLanes<T>;
  Index j = 0;
  for (; j + L <= r; j += L) {
    const Batch<T> c = load_dup_pairs(cp + j / 2), s = load_dup_pairs(sp + j / 2);
    const Batch<T> a = load(q + j) + load(qb + j), b = load(k + j) + load(kb + j);
    store(q + j, fmaddsub<T>(a, c, swap_adjacent<T>(a) * s));
    store(k + j, fmaddsub<T>(b, c, swap_adjacent<T>(b) * s));
  }
  for (; j < r; j += 2) {
    const T c = cp[j / 2], s = sp[j / 2];
    const T a0 = q[j] + qb[j], a1 = q[j + 1] + qb[j + 1], b0 = k[j] + kb[j], b1 = k[j + 1] + kb[j + 1];
    q[j] = mul_add(a0, c, -(a1 * s));
    q[j + 1] = mul_add(a1, c, a0 * s);
    k[j] = mul_add(b0, c, -(b1 * s));
    k[j + 1] = mul_add(b1, c, b0 * s);
  }
}

// ---- Half: pairs (i, i + r/2) -----------------------------------------------------------------------------
// cos and s_pos are the per-pair cos and (unsigned) sin, r/2 values each: lo' = lo c - hi s, hi' = hi c + lo s.

template <class T>
inline void rope_row_half(const T* src, T* dst, const T* cos, const T* s_pos, const T* bias, Index r) {
  constexpr Index L = kLanes<T>;
  const Index h = r / 2;
  Index i = 0;
  if (bias) {
    for (; i + L <= h; i += L) {
      const Batch<T> lo = load(src + i) + load(bias + i), hi = load(src + h + i) + load(bias + h + i);
      const Batch<T> c = load(cos + i), s = load(s_pos + i);
      store(dst + i, xsimd::fnma(hi, s, lo * c));
      store(dst + h + i, xsimd::fma(lo, s, hi * c));
    }
  } else {
    for (; i + L <= h; i += L) {
      const Batch<T> lo = load(src + i), hi = load(src + h + i);
      const Batch<T> c = load(cos + i), s = load(s_pos + i);
      store(dst + i, xsimd::fnma(hi, s, lo * c));
      store(dst + h + i, xsimd::fma(lo, s, hi * c));
    }
  }
  for (; i < h; ++i) {
    const T lo = src[i] + (bias ? bias[i] : T(0)), hi = src[h + i] + (bias ? bias[h + i] : T(0));
    dst[i] = mul_add(-hi, s_pos[i], lo * cos[i]);
    dst[h + i] = mul_add(lo, s_pos[i], hi * cos[i]);
  }
}

template <class T>
inline void rope_rows2_half(T* q, T* k, const T* cos, const T* s_pos, Index r) {
  constexpr Index L = kLanes<T>;
  const Index h = r / 2;
  Index i = 0;
  for (; i + L <= h; i += L) {
    const Batch<T> c = load(cos + i), s = load(s_pos + i);
    const Batch<T> qlo = load(q + i), qhi = load(q + h + i);
    const Batch<T> klo = load(k + i), khi = load(k + h + i);
    store(q + i, xsimd::fnma(qhi, s, qlo * c));
    store(q + h + i, xsimd::fma(qlo, s, qhi * c));
    store(k + i, xsimd::fnma(khi, s, klo * c));
    store(k + h + i, xsimd::fma(klo, s, khi * c));
  }
  for (; i < h; ++i) {
    const T ql = q[i], qh = q[h + i], kl = k[i], kh = k[h + i];
    q[i] = mul_add(-qh, s_pos[i], ql * cos[i]);
    q[h + i] = mul_add(ql, s_pos[i], qh * cos[i]);
    k[i] = mul_add(-kh, s_pos[i], kl * cos[i]);
    k[h + i] = mul_add(kl, s_pos[i], kh * cos[i]);
  }
}

/// rope_rows2_half with biases added before the rotation: rope_row_half's bias path for both rows, bit for bit.
template <class T>
inline void rope_rows2_bias_half(T* q, T* k, const T* qb, const T* kb, const T* cos, const T* s_pos, Index r) {
  constexpr Index L = kLanes<T>;
  const Index h = r / 2;
  Index i = 0;
  for (; i + L <= h; i += L) {
    const Batch<T> c = load(cos + i), s = load(s_pos + i);
    const Batch<T> qlo = load(q + i) + load(qb + i), qhi = load(q + h + i) + load(qb + h + i);
    const Batch<T> klo = load(k + i) + load(kb + i), khi = load(k + h + i) + load(kb + h + i);
    store(q + i, xsimd::fnma(qhi, s, qlo * c));
    store(q + h + i, xsimd::fma(qlo, s, qhi * c));
    store(k + i, xsimd::fnma(khi, s, klo * c));
    store(k + h + i, xsimd::fma(klo, s, khi * c));
  }
  for (; i < h; ++i) {
    const T ql = q[i] + qb[i], qh = q[h + i] + qb[h + i], kl = k[i] + kb[i], kh = k[h + i] + kb[h + i];
    q[i] = mul_add(-qh, s_pos[i], ql * cos[i]);
    q[h + i] = mul_add(ql, s_pos[i], qh * cos[i]);
    k[i] = mul_add(-kh, s_pos[i], kl * cos[i]);
    k[h + i] = mul_add(kl, s_pos[i], kh * cos[i]);
  }
}

/// dst[j] = src[j] (+ bias[j]) for the dims that pass through (j in [r, dim)).
template <class T>
inline void rope_pass_through(const T* src, T* dst, const T* bias, Index r, Index dim) {
  if (bias) {
    constexpr Index L = kLanes<T>;
    Index j = r;
    for (; j + L <= dim; j += L) store(dst + j, load(src + j) + load(bias + j));
    for (; j < dim; ++j) dst[j] = src[j] + bias[j];
  } else if (src != dst && dim > r) {
    std::memcpy(dst + r, src + r, static_cast<std::size_t>(dim - r) * sizeof(T));
  }
}

}  // namespace kexue::detail
