// SPDX-License-Identifier: MIT
#pragma once
// SIMD pieces of the fused attention kernel: a fast exp for the online softmax and the register-blocked
// broadcast-FMA micro-kernel used for both S = Q K^T and O += P V. Like detail/simd.hpp this is a SIMD helper
// file: the only attention file that talks to xsimd (and, for one bit reinterpretation, to AVX2 intrinsics).
//
// Layout idea ("rows as lanes"): the kernel keeps every per-query quantity transposed so that one SIMD register
// holds the same quantity for kLanes consecutive query rows. Then S^T[key][rows], P^T[key][rows] and
// O^T[dim][rows] are all products of the form  C[x][rows] += sum_t B(x, t) * A[t][rows]  with B broadcast
// from memory and A a packed row vector, and the softmax statistics (row max, row sum, rescale factor) are
// plain vertical vector operations: no horizontal reduction anywhere in the hot loop.

#include <cmath>
#include <limits>
#include <type_traits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "kexue/detail/simd.hpp"

namespace kexue::detail {

/// exp(x) for a batch, accurate to ~2 ulp for float, exactly 0 for x <= -88 (so exp(-inf) = 0) and never inf
/// for x <= 88. The softmax only ever evaluates it at x <= 0. Cody-Waite range reduction x = n ln2 + r,
/// |r| <= ln2/2, then the cephes degree-6 polynomial; 2^n is built in the exponent bits (n >= -127 gives
/// the bit pattern 0 = +0.0 at the bottom, which is what makes -inf map to an exact 0 without a select).
template <class T>
inline Batch<T> fast_exp(Batch<T> x) {
#if defined(__AVX2__) && defined(__FMA__)
  // Only when a float batch is exactly one ymm register (not under AVX-512, where xsimd picks zmm).
  if constexpr (std::is_same<T, float>::value && sizeof(Batch<T>) == sizeof(__m256)) {
    const __m256 lo = _mm256_set1_ps(-88.0f), hi = _mm256_set1_ps(88.0f);
    __m256 v = _mm256_min_ps(_mm256_max_ps(static_cast<__m256>(x), lo), hi);
    const __m256 fx = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // Two-part ln2: the high part has few mantissa bits, so fx * C1 is exact.
    v = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), v);
    v = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), v);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, v, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 v2 = _mm256_mul_ps(v, v);
    p = _mm256_fmadd_ps(p, v2, _mm256_add_ps(v, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return Batch<T>(_mm256_mul_ps(p, _mm256_castsi256_ps(e)));
  }
#endif
  // Generic path (double, or other instruction sets): xsimd's exp, with the tails pinned down explicitly.
  const T lo = std::is_same<T, float>::value ? T(-88) : T(-708);
  const T hi = -lo;
  const Batch<T> c = xsimd::min(xsimd::max(x, Batch<T>(lo)), Batch<T>(hi));
  return xsimd::select(x <= Batch<T>(lo), Batch<T>(T(0)), xsimd::exp(c));
}

/// Scalar exp with the same conventions (used by tails and the non-SIMD reference paths).
template <class T>
inline T scalar_exp(T x) {
  const T lo = std::is_same<T, float>::value ? T(-88) : T(-708);
  return x <= lo ? T(0) : std::exp(x < -lo ? x : -lo);
}

/// How the micro-kernel combines its register block with C.
enum class Combine {
  Store,        ///< C = acc
  ScaleAdd,     ///< C = C * alpha[rows] + acc   (online-softmax rescale of O)
};

/// C[x * ldc + r] (op)= sum_{t < nt} B[x * bx + t * bt] * A[t * lda + r] for x < NX and r < NR * kLanes.
/// NX x NR accumulators stay in registers across the whole reduction. With NX = 4, NR = 3 that is 12
/// accumulators (two FMA ports x ~5 cycles latency need >= 10 independent chains), plus 3 loads of A and
/// one broadcast register: 16 ymm registers, no spills. Per step 3 loads + 4 broadcasts feed 12 FMAs, so
/// the two load ports are not the bottleneck.
template <class T, int NX, int NR, Combine C>
inline void bcast_fma_block(const T* A, Index lda, const T* B, Index bx, Index bt, Index nt, T* Cp, Index ldc,
                            const T* alpha) {
  constexpr Index L = kLanes<T>;
  Batch<T> acc[NX][NR];
  for (int x = 0; x < NX; ++x)
    for (int r = 0; r < NR; ++r) acc[x][r] = Batch<T>(T(0));
  for (Index t = 0; t < nt; ++t) {
    Batch<T> a[NR];
    for (int r = 0; r < NR; ++r) a[r] = load(A + t * lda + r * L);
    const T* bp = B + t * bt;
    for (int x = 0; x < NX; ++x) {
      const Batch<T> b(bp[x * bx]);
      for (int r = 0; r < NR; ++r) acc[x][r] = xsimd::fma(b, a[r], acc[x][r]);
    }
  }
  for (int x = 0; x < NX; ++x) {
    for (int r = 0; r < NR; ++r) {
      T* cp = Cp + x * ldc + r * L;
      if constexpr (C == Combine::Store) {
        store(cp, acc[x][r]);
      } else {
        store(cp, xsimd::fma(load(cp), load(alpha + r * L), acc[x][r]));
      }
    }
  }
}

/// The same product for any count nx of x (blocks of 4, then a tail of 1-3).
template <class T, int NR, Combine C>
inline void bcast_fma(const T* A, Index lda, const T* B, Index bx, Index bt, Index nt, Index nx, T* Cp, Index ldc,
                      const T* alpha) {
  Index x = 0;
  for (; x + 4 <= nx; x += 4) bcast_fma_block<T, 4, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha);
  switch (nx - x) {
    case 3: bcast_fma_block<T, 3, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha); break;
    case 2: bcast_fma_block<T, 2, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha); break;
    case 1: bcast_fma_block<T, 1, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha); break;
    default: break;
  }
}

/// Which keys of a key tile a row tile may see, beyond the key range the caller already cut to.
struct TileMask {
  const unsigned char* keys = nullptr;  ///< per-key visibility for this tile (nonzero = visible), or null
  bool causal = false;                  ///< apply the causal rule row >= first_key_shift + j (j within the tile)
  Index first_key_shift = 0;            ///< j0 - (m - n): bottom-right alignment, query i sees keys <= i + m - n
};

/// True when x[0, n) holds no inf and no NaN: x - x is 0 for every finite x and NaN otherwise.
template <class T>
inline bool all_finite(const T* x, Index n) {
  constexpr Index L = kLanes<T>;
  Batch<T> acc(T(0));
  Index i = 0;
  for (; i + L <= n; i += L) {
    const Batch<T> v = load(x + i);
    acc += v - v;
  }
  T s = reduce_add<T>(acc);
  for (; i < n; ++i) s += x[i] - x[i];
  return s == s;
}

/// O^T = O^T * alpha + P^T V over the (row, key) pairs the mask lets through, for NX value columns: the
/// Combine::ScaleAdd product of bcast_fma_block with A = P^T [nt][NR * L] and B = V (column x at B[x], key t at
/// B[t * bt]). The plain kernel multiplies a hidden key's V row by its exact-zero weight, and 0 * inf = NaN
/// would reach a row that cannot see the key; here a hidden pair adds nothing whatever V holds. A visible pair
/// takes the same fma in the same order as the plain kernel, and a hidden pair there adds b * 0 = +-0 to an
/// accumulator that is never -0, so wherever V is finite the two kernels give the same bits.
template <class T, int NX, int NR>
inline void bcast_fma_masked_block(const T* A, Index lda, const T* B, Index bt, Index nt, T* Cp, Index ldc,
                                   const T* alpha, const TileMask& mask, const Batch<T>* rowidx) {
  constexpr Index L = kLanes<T>;
  const Batch<T> zero(T(0));
  Batch<T> acc[NX][NR];
  for (int x = 0; x < NX; ++x)
    for (int r = 0; r < NR; ++r) acc[x][r] = zero;
  for (Index t = 0; t < nt; ++t) {
    if (mask.keys && !mask.keys[t]) continue;  // no row sees this key
    Batch<T> a[NR];
    BatchBool<T> vis[NR];
    const Batch<T> need(T(mask.first_key_shift + t));
    for (int r = 0; r < NR; ++r) {
      a[r] = load(A + t * lda + r * L);
      vis[r] = mask.causal ? rowidx[r] >= need : zero == zero;
    }
    const T* bp = B + t * bt;
    for (int x = 0; x < NX; ++x) {
      const Batch<T> b(bp[x]);
      for (int r = 0; r < NR; ++r) acc[x][r] = xsimd::fma(xsimd::select(vis[r], b, zero), a[r], acc[x][r]);
    }
  }
  for (int x = 0; x < NX; ++x) {
    for (int r = 0; r < NR; ++r) {
      T* cp = Cp + x * ldc + r * L;
      store(cp, xsimd::fma(load(cp), load(alpha + r * L), acc[x][r]));
    }
  }
}

/// The masked O^T update for any number nx of value columns (blocks of 2: the visibility masks take registers
/// the 4-column block of the plain kernel uses for accumulators). row0: the tile's first query row.
template <class T, int NR>
inline void bcast_fma_masked(const T* A, Index lda, const T* B, Index bt, Index nt, Index nx, T* Cp, Index ldc,
                             const T* alpha, const TileMask& mask, Index row0) {
  constexpr Index L = kLanes<T>;
  alignas(64) T idx[NR * L];
  for (Index i = 0; i < NR * L; ++i) idx[i] = T(row0 + i);
  Batch<T> rowidx[NR];
  for (int r = 0; r < NR; ++r) rowidx[r] = load(idx + r * L);
  Index x = 0;
  for (; x + 2 <= nx; x += 2)
    bcast_fma_masked_block<T, 2, NR>(A, lda, B + x, bt, nt, Cp + x * ldc, ldc, alpha, mask, rowidx);
  if (x < nx) bcast_fma_masked_block<T, 1, NR>(A, lda, B + x, bt, nt, Cp + x * ldc, ldc, alpha, mask, rowidx);
}

/// Online-softmax step 1 on a key tile S^T [nb][NR * L] (rows as lanes): logits *= rowscale, clamped to the
/// finite range (a +-inf or overflowing logit must not turn s - max into inf - inf), masked keys set to -inf.
/// Returns the tile's row maxima in tmax. row0: index of the tile's first query row.
template <class T, int NR>
inline void softmax_tile_logits(T* st, Index nb, const T* rowscale, const TileMask& mask, Index row0, T* tmax) {
  constexpr Index L = kLanes<T>;
  constexpr Index W = NR * L;
  const Batch<T> big(std::numeric_limits<T>::max()), nbig(-std::numeric_limits<T>::max());
  const Batch<T> ninf(-std::numeric_limits<T>::infinity());
  Batch<T> rs[NR], mx[NR], rowidx[NR];
  alignas(64) T idx[W];
  for (Index i = 0; i < W; ++i) idx[i] = T(row0 + i);
  for (int r = 0; r < NR; ++r) {
    rs[r] = load(rowscale + r * L);
    mx[r] = ninf;
    rowidx[r] = load(idx + r * L);
  }
  const bool masked = mask.keys != nullptr || mask.causal;
  for (Index j = 0; j < nb; ++j) {
    T* sp = st + j * W;
    if (!masked) {
      for (int r = 0; r < NR; ++r) {
        const Batch<T> s = xsimd::min(xsimd::max(load(sp + r * L) * rs[r], nbig), big);
        mx[r] = xsimd::max(mx[r], s);
        store(sp + r * L, s);
      }
      continue;
    }
    if (mask.keys && !mask.keys[j]) {
      for (int r = 0; r < NR; ++r) store(sp + r * L, ninf);
      continue;
    }
    const Batch<T> need(T(mask.first_key_shift + j));
    for (int r = 0; r < NR; ++r) {
      Batch<T> s = xsimd::min(xsimd::max(load(sp + r * L) * rs[r], nbig), big);
      if (mask.causal) s = xsimd::select(rowidx[r] >= need, s, ninf);
      mx[r] = xsimd::max(mx[r], s);
      store(sp + r * L, s);
    }
  }
  for (int r = 0; r < NR; ++r) store(tmax + r * L, mx[r]);
}

/// Online-softmax step 2: given the old running max m and the tile max, sets m to the new max, alpha to the
/// factor exp(m_old - m_new) that rescales the running sum and O, replaces S^T by P^T = exp(S^T - m_new) and
/// updates the running sum l = l * alpha + sum_j P. A row that has seen no visible key yet keeps m = -inf;
/// its shift is taken as 0 so that exp(-inf - shift) = 0 and no inf - inf appears.
template <class T, int NR>
inline void softmax_tile_exp(T* st, Index nb, const T* tmax, T* m, T* l, T* alpha) {
  constexpr Index L = kLanes<T>;
  constexpr Index W = NR * L;
  const Batch<T> ninf(-std::numeric_limits<T>::infinity());
  Batch<T> shift[NR], sum[NR];
  for (int r = 0; r < NR; ++r) {
    const Batch<T> mold = load(m + r * L);
    const Batch<T> mnew = xsimd::max(mold, load(tmax + r * L));
    shift[r] = xsimd::select(mnew == ninf, Batch<T>(T(0)), mnew);
    store(alpha + r * L, fast_exp<T>(mold - shift[r]));
    store(m + r * L, mnew);
    sum[r] = Batch<T>(T(0));
  }
  for (Index j = 0; j < nb; ++j) {
    T* sp = st + j * W;
    for (int r = 0; r < NR; ++r) {
      const Batch<T> p = fast_exp<T>(load(sp + r * L) - shift[r]);
      sum[r] += p;
      store(sp + r * L, p);
    }
  }
  for (int r = 0; r < NR; ++r) store(l + r * L, xsimd::fma(load(l + r * L), load(alpha + r * L), sum[r]));
}

/// Squared-ReLU tile: S^T <- relu(scale * S^T)^2, masked keys 0. The 1/L normalisation is applied once at the end.
template <class T, int NR>
inline void relu2_tile(T* st, Index nb, T scale, const TileMask& mask, Index row0) {
  constexpr Index L = kLanes<T>;
  constexpr Index W = NR * L;
  const Batch<T> vs(scale), zero(T(0));
  Batch<T> rowidx[NR];
  alignas(64) T idx[W];
  for (Index i = 0; i < W; ++i) idx[i] = T(row0 + i);
  for (int r = 0; r < NR; ++r) rowidx[r] = load(idx + r * L);
  for (Index j = 0; j < nb; ++j) {
    T* sp = st + j * W;
    if (mask.keys && !mask.keys[j]) {
      for (int r = 0; r < NR; ++r) store(sp + r * L, zero);
      continue;
    }
    const Batch<T> need(T(mask.first_key_shift + j));
    for (int r = 0; r < NR; ++r) {
      const Batch<T> a = xsimd::max(load(sp + r * L) * vs, zero);
      Batch<T> p = a * a;
      if (mask.causal) p = xsimd::select(rowidx[r] >= need, p, zero);
      store(sp + r * L, p);
    }
  }
}

/// One query row against keys [0, lim) with online softmax (or squared ReLU), for tiles of very few rows: the
/// KV-cache decoding step (n = 1) would waste all but one lane of the rows-as-lanes tile. Vectorised along d
/// for q.k and along dv for the P V update; exp vectorised over the key chunk. sbuf holds kChunk values.
/// relu2_inv: 1/L for SquaredRelu (0 for a row that sees nothing). Writes out[0, dv).
template <class T, Index kChunk>
inline void attention_one_row(const T* q, Index d, const T* k, Index ldk, const T* v, Index ldv, Index dv, Index lim,
                              const unsigned char* mask, T rowscale, bool relu2, T relu2_inv, T* sbuf, T* o, T* out) {
  constexpr Index L = kLanes<T>;
  static_assert(kChunk % L == 0, "the key chunk must be whole registers");
  const T ninf = -std::numeric_limits<T>::infinity();
  const T big = std::numeric_limits<T>::max();
  std::fill(o, o + dv, T(0));
  T m = ninf, l = T(0);
  for (Index j0 = 0; j0 < lim; j0 += kChunk) {
    const Index nb = std::min(kChunk, lim - j0);
    T cmax = ninf;
    for (Index j = 0; j < kChunk; ++j) {
      if (j >= nb || (mask && !mask[j0 + j])) {
        sbuf[j] = relu2 ? T(0) : ninf;
        continue;
      }
      T sv = dot(q, k + (j0 + j) * ldk, d) * rowscale;
      if (relu2) {
        sv = sv > T(0) ? sv * sv : T(0);
      } else {
        sv = std::min(std::max(sv, -big), big);
        cmax = std::max(cmax, sv);
      }
      sbuf[j] = sv;
    }
    if (!relu2) {
      const T mnew = std::max(m, cmax);
      const T shift = mnew == ninf ? T(0) : mnew;
      const T alpha = scalar_exp(m - shift);
      Batch<T> sum(T(0));
      const Batch<T> vshift(shift);
      for (Index j = 0; j < kChunk; j += L) {
        const Batch<T> p = fast_exp<T>(load(sbuf + j) - vshift);
        sum += p;
        store(sbuf + j, p);
      }
      l = l * alpha + reduce_add<T>(sum);
      m = mnew;
      if (alpha != T(1)) scale(alpha, o, dv);
    }
    for (Index j = 0; j < nb; ++j)
      if (sbuf[j] != T(0)) axpy(sbuf[j], v + (j0 + j) * ldv, o, dv);
  }
  const T f = relu2 ? relu2_inv : (l > T(0) ? T(1) / l : T(0));
  for (Index e = 0; e < dv; ++e) out[e] = o[e] * f;
}

}  // namespace kexue::detail
