// SPDX-License-Identifier: MIT
#pragma once
// SIMD row kernels of RoPE. Every table row stores, for one position, cos[j] and a *signed* sin[j] over
// the rotary dims so that both layouts compute
//     out[j] = x[j] * cos[j] + x[partner(j)] * sin[j]
// with partner(j) = j ^ 1 (Interleaved) or (j + r/2) mod r (Half). Interleaved needs one in-register
// swap of adjacent lanes per vector (an in-lane permute: one cheap shuffle, no lane crossing); Half needs
// no shuffle at all because the partner of a vector of the low half is the vector r/2 further on.
// The swap is the one operation xsimd 8.1 and 14 spell differently (batch_constant), so it is written
// with intrinsics here for the registers the library can be compiled for, with a portable fallback.

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

// ---- Interleaved: pairs (2i, 2i+1) ------------------------------------------------------------------------
// `bias` may be null (no bias). src and dst may be the same row (in place): every vector is loaded before
// the store that could overwrite it, and pairs never straddle a vector (L is even, vectors start at
// multiples of L).

template <class T>
inline void rope_row_interleaved(const T* src, T* dst, const T* cos, const T* sin, const T* bias, Index r) {
  constexpr Index L = kLanes<T>;
  Index j = 0;
  if (bias) {
    for (; j + L <= r; j += L) {
      const Batch<T> x = load(src + j) + load(bias + j);
      store(dst + j, xsimd::fma(x, load(cos + j), swap_adjacent<T>(x) * load(sin + j)));
    }
  } else {
    // Two vectors per iteration: the work per vector is a short dependency chain (permute, mul, fma), and
    // two independent chains hide its latency behind the loads.
    for (; j + 2 * L <= r; j += 2 * L) {
      const Batch<T> x0 = load(src + j), x1 = load(src + j + L);
      const Batch<T> y0 = xsimd::fma(x0, load(cos + j), swap_adjacent<T>(x0) * load(sin + j));
      const Batch<T> y1 = xsimd::fma(x1, load(cos + j + L), swap_adjacent<T>(x1) * load(sin + j + L));
      store(dst + j, y0);
      store(dst + j + L, y1);
    }
    for (; j + L <= r; j += L) {
      const Batch<T> x = load(src + j);
      store(dst + j, xsimd::fma(x, load(cos + j), swap_adjacent<T>(x) * load(sin + j)));
    }
  }
  for (; j < r; j += 2) {
    const T a = src[j] + (bias ? bias[j] : T(0)), b = src[j + 1] + (bias ? bias[j + 1] : T(0));
    dst[j] = a * cos[j] + b * sin[j];
    dst[j + 1] = b * cos[j + 1] + a * sin[j + 1];
  }
}

/// q and k rows at the same position with one load of the table row (the batched q/k form).
template <class T>
inline void rope_rows2_interleaved(T* q, T* k, const T* cos, const T* sin, Index r) {
  constexpr Index L = kLanes<T>;
  Index j = 0;
  for (; j + L <= r; j += L) {
    const Batch<T> c = load(cos + j), s = load(sin + j);
    const Batch<T> a = load(q + j), b = load(k + j);
    store(q + j, xsimd::fma(a, c, swap_adjacent<T>(a) * s));
    store(k + j, xsimd::fma(b, c, swap_adjacent<T>(b) * s));
  }
  for (; j < r; j += 2) {
    const T a0 = q[j], a1 = q[j + 1], b0 = k[j], b1 = k[j + 1];
    q[j] = a0 * cos[j] + a1 * sin[j];
    q[j + 1] = a1 * cos[j + 1] + a0 * sin[j + 1];
    k[j] = b0 * cos[j] + b1 * sin[j];
    k[j + 1] = b1 * cos[j + 1] + b0 * sin[j + 1];
  }
}

// ---- Half: pairs (i, i + r/2) -----------------------------------------------------------------------------
// cos is the same in both halves and sin[h + i] = -sin[i] = +sin(angle), so only cos[0, h) and sin[h, r)
// are read: lo' = lo c - hi s, hi' = hi c + lo s.

template <class T>
inline void rope_row_half(const T* src, T* dst, const T* cos, const T* sin, const T* bias, Index r) {
  constexpr Index L = kLanes<T>;
  const Index h = r / 2;
  const T* s_pos = sin + h;
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
    dst[i] = lo * cos[i] - hi * s_pos[i];
    dst[h + i] = hi * cos[i] + lo * s_pos[i];
  }
}

template <class T>
inline void rope_rows2_half(T* q, T* k, const T* cos, const T* sin, Index r) {
  constexpr Index L = kLanes<T>;
  const Index h = r / 2;
  const T* s_pos = sin + h;
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
    q[i] = ql * cos[i] - qh * s_pos[i];
    q[h + i] = qh * cos[i] + ql * s_pos[i];
    k[i] = kl * cos[i] - kh * s_pos[i];
    k[h + i] = kh * cos[i] + kl * s_pos[i];
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
