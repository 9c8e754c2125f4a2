// SPDX-License-Identifier: MIT
#pragma once
// SIMD row kernels of RoPE. The table gives, for one position, the cos c_i and sin s_i of each pair's
// angle (r/2 values each, pair order). A pair (x_a, x_b) becomes (x_a c - x_b s, x_b c + x_a s), with
// (a, b) = (2i, 2i+1) for Interleaved and (i, i + r/2) for Half. Half needs no shuffle: the partner of a
// vector of the low half is the vector r/2 further on. Interleaved duplicates each c_i / s_i into both
// lanes of its pair in a register (broadcast + in-lane permute), swaps adjacent lanes of x and combines
// with vfmaddsub. Those shuffles are the operations xsimd 8.1 and 14 spell differently (batch_constant):
// they are the named helpers of arch/ops.hpp (one or two instructions per architecture, a portable version
// otherwise), and this file has no intrinsics, so every kernel here works for any register width.
// x (src, dst, q, k) may be stored as S = Eigen::half / Eigen::bfloat16 with a float (or double) table T: each
// vector is widened as it is loaded (arch/ops.hpp's load_as), computed in T exactly as the T kernel computes it,
// and rounded once as it is stored (store_as), so a 16-bit row's result is the T kernel's on the widened row,
// rounded. Biases are T. With S == T these are plain loads and stores: the T kernels are unchanged.
// src and dst may be the same row (in place): every vector is loaded before the store that could overwrite
// it, and pairs never straddle a vector.

#include <cmath>
#include <cstring>
#include <type_traits>

#include "kexue/detail/arch/ops.hpp"
#include "kexue/detail/simd.hpp"

namespace kexue::detail {

/// a * b + c for the scalar tails, rounded exactly as the vector lanes are (one rounding where the vector
/// code uses an FMA), so a row's result does not depend on where the last full vector ends and does not
/// change with the compiler's freedom to contract a * b + c.
template <class T>
inline T mul_add(T a, T b, T c) {
  return madd(a, b, c);
}

/// Vectors of one row in flight in the interleaved kernel: two independent chains cover the permute + FMA
/// latency. It is not scaled with the width: a head of 64 floats is only 4 AVX-512 vectors, so a larger unroll
/// would mostly move work into the remainder loop.
constexpr Index kRopeUnroll = 2;

// ---- Interleaved: pairs (2i, 2i+1) ------------------------------------------------------------------------
// `bias` may be null (no bias). Vectors start at multiples of L (even), so no pair straddles two vectors.

// cp and sp are the compact per-pair cos and sin (r/2 values each, unsigned): half the table bytes of a
// full-width row, which matters because the table streams from L2/L3 once per head.

template <class T, class S>
inline void rope_row_interleaved(const S* src, S* dst, const T* cp, const T* sp, const T* bias, Index r) {
  constexpr Index L = kLanes<T>;
  Index j = 0;
  if (bias) {
    for (; j + L <= r; j += L) {
      const Batch<T> x = load_as<T>(src + j) + load(bias + j);
      store_as(dst + j, fmaddsub<T>(x, load_dup_pairs(cp + j / 2), swap_adjacent<T>(x) * load_dup_pairs(sp + j / 2)));
    }
  } else {
    // kRopeUnroll vectors per iteration: the work per vector is a short dependency chain (permutes, mul,
    // fmaddsub), and independent chains hide its latency behind the loads.
    for (; j + kRopeUnroll * L <= r; j += kRopeUnroll * L) {
      Batch<T> y[kRopeUnroll];
      for (Index u = 0; u < kRopeUnroll; ++u) {
        const Index o = j + u * L;
        const Batch<T> x = load_as<T>(src + o);
        y[u] = fmaddsub<T>(x, load_dup_pairs(cp + o / 2), swap_adjacent<T>(x) * load_dup_pairs(sp + o / 2));
      }
      for (Index u = 0; u < kRopeUnroll; ++u) store_as(dst + j + u * L, y[u]);
    }
    for (; j + L <= r; j += L) {
      const Batch<T> x = load_as<T>(src + j);
      store_as(dst + j, fmaddsub<T>(x, load_dup_pairs(cp + j / 2), swap_adjacent<T>(x) * load_dup_pairs(sp + j / 2)));
    }
  }
  for (; j < r; j += 2) {
    const T a = as_compute<T>(src[j]) + (bias ? bias[j] : T(0)), b = as_compute<T>(src[j + 1]) + (bias ? bias[j + 1] : T(0));
    const T c = cp[j / 2], s = sp[j / 2];
    dst[j] = round_to<S>(mul_add(a, c, -(b * s)));
    dst[j + 1] = round_to<S>(mul_add(b, c, a * s));
  }
}

/// q and k rows at the same position with one load of the table row (the batched q/k form).
template <class T, class S>
inline void rope_rows2_interleaved(S* q, S* k, const T* cp, const T* sp, Index r) {
  constexpr Index L = kLanes<T>;
  Index j = 0;
  for (; j + L <= r; j += L) {
    const Batch<T> c = load_dup_pairs(cp + j / 2), s = load_dup_pairs(sp + j / 2);
    const Batch<T> a = load_as<T>(q + j), b = load_as<T>(k + j);
    store_as(q + j, fmaddsub<T>(a, c, swap_adjacent<T>(a) * s));
    store_as(k + j, fmaddsub<T>(b, c, swap_adjacent<T>(b) * s));
  }
  for (; j < r; j += 2) {
    const T c = cp[j / 2], s = sp[j / 2];
    const T a0 = as_compute<T>(q[j]), a1 = as_compute<T>(q[j + 1]), b0 = as_compute<T>(k[j]), b1 = as_compute<T>(k[j + 1]);
    q[j] = round_to<S>(mul_add(a0, c, -(a1 * s)));
    q[j + 1] = round_to<S>(mul_add(a1, c, a0 * s));
    k[j] = round_to<S>(mul_add(b0, c, -(b1 * s)));
    k[j + 1] = round_to<S>(mul_add(b1, c, b0 * s));
  }
}

/// rope_rows2_interleaved with biases added before the rotation (the batched q/k RoPE + bias form): per row, the
/// same operations in the same order as rope_row_interleaved's bias path, so the results are its bits.
template <class T, class S>
inline void rope_rows2_bias_interleaved(S* q, S* k, const T* qb, const T* kb, const T* cp, const T* sp, Index r) {
  constexpr Index L = kLanes<T>;
  Index j = 0;
  for (; j + L <= r; j += L) {
    const Batch<T> c = load_dup_pairs(cp + j / 2), s = load_dup_pairs(sp + j / 2);
    const Batch<T> a = load_as<T>(q + j) + load(qb + j), b = load_as<T>(k + j) + load(kb + j);
    store_as(q + j, fmaddsub<T>(a, c, swap_adjacent<T>(a) * s));
    store_as(k + j, fmaddsub<T>(b, c, swap_adjacent<T>(b) * s));
  }
  for (; j < r; j += 2) {
    const T c = cp[j / 2], s = sp[j / 2];
    const T a0 = as_compute<T>(q[j]) + qb[j], a1 = as_compute<T>(q[j + 1]) + qb[j + 1];
    const T b0 = as_compute<T>(k[j]) + kb[j], b1 = as_compute<T>(k[j + 1]) + kb[j + 1];
    q[j] = round_to<S>(mul_add(a0, c, -(a1 * s)));
    q[j + 1] = round_to<S>(mul_add(a1, c, a0 * s));
    k[j] = round_to<S>(mul_add(b0, c, -(b1 * s)));
    k[j + 1] = round_to<S>(mul_add(b1, c, b0 * s));
  }
}

// ---- Half: pairs (i, i + r/2) -----------------------------------------------------------------------------
// cos and s_pos are the per-pair cos and (unsigned) sin, r/2 values each: lo' = lo c - hi s, hi' = hi c + lo s.

template <class T, class S>
inline void rope_row_half(const S* src, S* dst, const T* cos, const T* s_pos, const T* bias, Index r) {
  constexpr Index L = kLanes<T>;
  const Index h = r / 2;
  Index i = 0;
  if (bias) {
    for (; i + L <= h; i += L) {
      const Batch<T> lo = load_as<T>(src + i) + load(bias + i), hi = load_as<T>(src + h + i) + load(bias + h + i);
      const Batch<T> c = load(cos + i), s = load(s_pos + i);
      store_as(dst + i, fnmadd(hi, s, lo * c));
      store_as(dst + h + i, fmadd(lo, s, hi * c));
    }
  } else {
    for (; i + L <= h; i += L) {
      const Batch<T> lo = load_as<T>(src + i), hi = load_as<T>(src + h + i);
      const Batch<T> c = load(cos + i), s = load(s_pos + i);
      store_as(dst + i, fnmadd(hi, s, lo * c));
      store_as(dst + h + i, fmadd(lo, s, hi * c));
    }
  }
  for (; i < h; ++i) {
    const T lo = as_compute<T>(src[i]) + (bias ? bias[i] : T(0)), hi = as_compute<T>(src[h + i]) + (bias ? bias[h + i] : T(0));
    dst[i] = round_to<S>(mul_add(-hi, s_pos[i], lo * cos[i]));
    dst[h + i] = round_to<S>(mul_add(lo, s_pos[i], hi * cos[i]));
  }
}

template <class T, class S>
inline void rope_rows2_half(S* q, S* k, const T* cos, const T* s_pos, Index r) {
  constexpr Index L = kLanes<T>;
  const Index h = r / 2;
  Index i = 0;
  for (; i + L <= h; i += L) {
    const Batch<T> c = load(cos + i), s = load(s_pos + i);
    const Batch<T> qlo = load_as<T>(q + i), qhi = load_as<T>(q + h + i);
    const Batch<T> klo = load_as<T>(k + i), khi = load_as<T>(k + h + i);
    store_as(q + i, fnmadd(qhi, s, qlo * c));
    store_as(q + h + i, fmadd(qlo, s, qhi * c));
    store_as(k + i, fnmadd(khi, s, klo * c));
    store_as(k + h + i, fmadd(klo, s, khi * c));
  }
  for (; i < h; ++i) {
    const T ql = as_compute<T>(q[i]), qh = as_compute<T>(q[h + i]), kl = as_compute<T>(k[i]), kh = as_compute<T>(k[h + i]);
    q[i] = round_to<S>(mul_add(-qh, s_pos[i], ql * cos[i]));
    q[h + i] = round_to<S>(mul_add(ql, s_pos[i], qh * cos[i]));
    k[i] = round_to<S>(mul_add(-kh, s_pos[i], kl * cos[i]));
    k[h + i] = round_to<S>(mul_add(kl, s_pos[i], kh * cos[i]));
  }
}

/// rope_rows2_half with biases added before the rotation: rope_row_half's bias path for both rows, bit for bit.
template <class T, class S>
inline void rope_rows2_bias_half(S* q, S* k, const T* qb, const T* kb, const T* cos, const T* s_pos, Index r) {
  constexpr Index L = kLanes<T>;
  const Index h = r / 2;
  Index i = 0;
  for (; i + L <= h; i += L) {
    const Batch<T> c = load(cos + i), s = load(s_pos + i);
    const Batch<T> qlo = load_as<T>(q + i) + load(qb + i), qhi = load_as<T>(q + h + i) + load(qb + h + i);
    const Batch<T> klo = load_as<T>(k + i) + load(kb + i), khi = load_as<T>(k + h + i) + load(kb + h + i);
    store_as(q + i, fnmadd(qhi, s, qlo * c));
    store_as(q + h + i, fmadd(qlo, s, qhi * c));
    store_as(k + i, fnmadd(khi, s, klo * c));
    store_as(k + h + i, fmadd(klo, s, khi * c));
  }
  for (; i < h; ++i) {
    const T ql = as_compute<T>(q[i]) + qb[i], qh = as_compute<T>(q[h + i]) + qb[h + i];
    const T kl = as_compute<T>(k[i]) + kb[i], kh = as_compute<T>(k[h + i]) + kb[h + i];
    q[i] = round_to<S>(mul_add(-qh, s_pos[i], ql * cos[i]));
    q[h + i] = round_to<S>(mul_add(ql, s_pos[i], qh * cos[i]));
    k[i] = round_to<S>(mul_add(-kh, s_pos[i], kl * cos[i]));
    k[h + i] = round_to<S>(mul_add(kl, s_pos[i], kh * cos[i]));
  }
}

/// dst[j] = src[j] (+ bias[j]) for the dims that pass through (j in [r, dim)).
template <class T, class S>
inline void rope_pass_through(const S* src, S* dst, const T* bias, Index r, Index dim) {
  if (bias) {
    constexpr Index L = kLanes<T>;
    Index j = r;
    for (; j + L <= dim; j += L) store_as(dst + j, load_as<T>(src + j) + load(bias + j));
    for (; j < dim; ++j) dst[j] = round_to<S>(as_compute<T>(src[j]) + bias[j]);
  } else if (src != dst && dim > r) {
    std::memcpy(static_cast<void*>(dst + r), static_cast<const void*>(src + r), static_cast<std::size_t>(dim - r) * sizeof(S));
  }
}

}  // namespace kexue::detail
