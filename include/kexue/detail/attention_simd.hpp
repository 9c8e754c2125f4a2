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
#include <vector>

#include "kexue/detail/arch/ops.hpp"  // fmadd: one rounding wherever kFusedFma (xsimd 8.1's AVX-512 fma is two)
#include "kexue/detail/simd.hpp"

namespace kexue::detail {

/// exp(x) for a batch, accurate to ~2 ulp for float, exactly 0 for x <= -88 (so exp(-inf) = 0) and never inf
/// for x <= 88. The softmax only ever evaluates it at x <= 0, and says so with kNonPositive (no upper clamp; the
/// same bits there). Cody-Waite range reduction x = n ln2 + r, |r| <= ln2/2 (n = t rounded, t = x log2 e), then
/// the cephes degree-7 polynomial in plain Horner form (one operation fewer than cephes' p v^2 + v + 1 ending, and
/// more accurate: worst relative error over every float in [-87, 0] 7.5e-8 with FMA, 1.0e-7 without, against
/// 1.2e-7 for the cephes ending); 2^n is built in the exponent bits (n >= -127 gives the bit pattern 0 = +0.0
/// at the bottom, which is what makes -inf map to an exact 0 without a select).
/// n is rounded by adding 1.5 * 2^23 + 127 (exact for |t| < 2^22: the sum's last mantissa bits are then n + 127,
/// the biased exponent of 2^n, which a shift moves into place) and subtracting it again: three plain float and
/// integer operations where rounding instructions, a conversion and an integer add took five on x86 (vroundps and
/// vrndscaleps are two micro-ops each on Intel cores). A tie t = k + 1/2 may round either way; r stays within
/// ln2/2 and the result is as accurate.
template <class T, bool kNonPositive = false>
inline Batch<T> fast_exp(Batch<T> x) {
  if constexpr (std::is_same<T, float>::value) {
    using B = Batch<float>;
    // Clamped first, so t stays in the range the rounding trick needs. A NaN x counts as -inf and gives 0 on every
    // ISA (at_least: x86's vmaxps(x, lo) returns lo for a NaN, ARM64's fmax would keep it).
    B v = at_least<float>(x, B(-88.0f));
    if constexpr (!kNonPositive) v = xsimd::min(v, B(88.0f));
    // t rounded to float first (opaque: no FMA), as every build computes it.
    const B biased = opaque(v * B(1.44269504088896341f)) + B(12583039.0f);  // 1.5 * 2^23 + 127
    const B fx = biased - B(12583039.0f);
    // Two-part ln2: the high part has few mantissa bits, so fx * C1 is exact.
    v = fnmadd(fx, B(0.693359375f), v);
    v = fnmadd(fx, B(-2.12194440e-4f), v);
    B p(1.9875691500e-4f);
    p = fmadd(p, v, B(1.3981999507e-3f));
    p = fmadd(p, v, B(8.3334519073e-3f));
    p = fmadd(p, v, B(4.1665795894e-2f));
    p = fmadd(p, v, B(1.6666665459e-1f));
    p = fmadd(p, v, B(5.0000001201e-1f));
    p = fmadd(p, v, B(1.0f));
    p = fmadd(p, v, B(1.0f));
    // p * 2^fx with 2^fx built in the exponent bits ((fx + 127) << 23, the low bits of biased shifted up; the
    // bits of 1.5 * 2^23 above them leave the register): fx = -127 gives +0.0.
    const Batch<std::int32_t> e = reinterpret<std::int32_t>(biased) << 23;
    return p * reinterpret<float>(e);
  } else {
    // double: xsimd's exp, with the tails pinned down explicitly.
    const T lo = T(-708), hi = -lo;
    // A NaN x becomes lo before xsimd's exp (whose integer conversion must not see it), and gives 0.
    const Batch<T> c = xsimd::min(at_least<T>(x, Batch<T>(lo)), Batch<T>(hi));
    return xsimd::select(Batch<T>(lo) < x, xsimd::exp(c), Batch<T>(T(0)));
  }
}

/// The tiled softmax (softmax_tile_logits / softmax_tile_exp) keeps its logits in units of 1 / kSoftmaxLogitScale
/// and exponentiates them with softmax_exp. float: base 2, logits times log2 e (folded into the row scale, one
/// rounding), softmax_exp(x) = 2^x, whose range reduction is exact (n = x rounded, r = x - n, |r| <= 1/2): no
/// multiplication by log2 e, one reduction step instead of Cody-Waite's two and a degree-6 polynomial: three
/// operations fewer per register than fast_exp, the softmax's largest cost beside the FMAs. double: base e, fast_exp.
template <class T>
constexpr T kSoftmaxLogitScale = std::is_same<T, float>::value ? T(1.44269504088896340736) : T(1);

/// exp of the tiled softmax for x <= 0 in its logit units (see kSoftmaxLogitScale): 2^x for float, exactly 0 for x <=
/// -127 and for -inf and NaN (at_least, as in fast_exp), accurate to 8.0e-8 relative with FMA and 1.03e-7 without
/// (worst over every float in [-125, 0]). n is rounded by fast_exp's addition of 1.5 * 2^23 + 127. 2^r on |r| <= 1/2 is
/// a degree-6 polynomial 1 + r q(r), fitted for least maximum relative error (2.0e-9 before float rounding, so the
/// float evaluation's own rounding dominates: degree 7 gave 6.9e-8 / 9.2e-8 for one more operation per register, degree
/// 5 would give 1.7e-7), in Horner form, ending in + 1 so that 2^0 is exactly 1.
template <class T>
inline Batch<T> softmax_exp(Batch<T> x) {
  if constexpr (std::is_same<T, float>::value) {
    using B = Batch<float>;
    const B v = at_least<float>(x, B(-127.0f));
    const B biased = v + B(12583039.0f);  // 1.5 * 2^23 + 127
    const B r = v - (biased - B(12583039.0f));
    B p(1.535336341e-04f);
    p = fmadd(p, r, B(1.339887502e-03f));
    p = fmadd(p, r, B(9.618436918e-03f));
    p = fmadd(p, r, B(5.550332367e-02f));
    p = fmadd(p, r, B(2.402264774e-01f));
    p = fmadd(p, r, B(6.931471825e-01f));
    p = fmadd(p, r, B(1.0f));
    // p * 2^n, 2^n built in the exponent bits as in fast_exp: n = -127 gives +0.0.
    const Batch<std::int32_t> e = reinterpret<std::int32_t>(biased) << 23;
    return p * reinterpret<float>(e);
  } else {
    return fast_exp<T, true>(x);
  }
}

/// Scalar exp with the same conventions (used by tails and the non-SIMD reference paths).
template <class T>
inline T scalar_exp(T x) {
  const T lo = std::is_same<T, float>::value ? T(-88) : T(-708);
  return lo < x ? std::exp(x < -lo ? x : -lo) : T(0);  // a NaN x gives 0, as in fast_exp
}

/// How the micro-kernel combines its register block with C.
enum class Combine {
  Store,        ///< C = acc
  ScaleAdd,     ///< C = C * alpha[rows] + acc   (online-softmax rescale of O)
};

/// C[x * ldc + r] (op)= sum_{t < nt} B[x * bx + t * bt] * A[t * lda + r] for x < NX and r < NR * kLanes.
/// NX x NR accumulators stay in registers across the whole reduction. Two FMA pipes x ~4 cycles of latency need
/// >= 8-10 independent chains; with NR = 3 that is NX = 4 (12 accumulators + 3 loads of A + 1 broadcast = 16
/// registers, all that SSE/AVX2 have) and NX = 8 where there are 32 registers (AVX-512, ARM64: 24 + 3 + 1 = 28),
/// which halves the reloads of A per FMA. Each C element sums over t in the same order whatever NX is, so the
/// block size never changes a result.
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
      for (int r = 0; r < NR; ++r) acc[x][r] = fmadd(b, a[r], acc[x][r]);
    }
  }
  for (int x = 0; x < NX; ++x) {
    for (int r = 0; r < NR; ++r) {
      T* cp = Cp + x * ldc + r * L;
      if constexpr (C == Combine::Store) {
        store(cp, acc[x][r]);
      } else {
        store(cp, fmadd(load(cp), load(alpha + r * L), acc[x][r]));
      }
    }
  }
}

/// Columns per register block of bcast_fma (see bcast_fma_block): 8 with 32 vector registers, else 4.
constexpr int kBlockCols = kVectorRegisters >= 32 ? 8 : 4;

/// The same product for any count nx of x (blocks of kBlockCols, then of 4, then a tail of 1-3).
template <class T, int NR, Combine C>
inline void bcast_fma(const T* A, Index lda, const T* B, Index bx, Index bt, Index nt, Index nx, T* Cp, Index ldc,
                      const T* alpha) {
  Index x = 0;
  for (; x + kBlockCols <= nx; x += kBlockCols)
    bcast_fma_block<T, kBlockCols, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha);
  if constexpr (kBlockCols > 4) {
    if (x + 4 <= nx) {
      bcast_fma_block<T, 4, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha);
      x += 4;
    }
  }
  switch (nx - x) {
    case 3: bcast_fma_block<T, 3, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha); break;
    case 2: bcast_fma_block<T, 2, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha); break;
    case 1: bcast_fma_block<T, 1, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha); break;
    default: break;
  }
}

/// Which keys of a key tile a row tile may see, beyond the key range the caller already cut to: key j of the tile
/// (0-based within it) is visible to row r when keys[j] != 0 (if keys), j >= lo[r] (if lo) and j < hi[r] (if hi).
/// lo and hi are each row's key window relative to the tile start, in T (exact: they lie in [0, kTileKeys]), so
/// one broadcast of j and one compare per register of rows tests an element; a null bound costs nothing.
template <class T>
struct TileMask {
  const unsigned char* keys = nullptr;  ///< per-key visibility for this tile (nonzero = visible), or null
  const T* lo = nullptr;                ///< per row: first visible key of the tile, or null (no lower edge here)
  const T* hi = nullptr;                ///< per row: keys from here on are hidden, or null (no upper edge here)
  bool masked() const { return keys != nullptr || lo != nullptr || hi != nullptr; }
};

/// Visibility of tile key j for the NR registers of rows under tm's window edges (all true when it has none).
template <class T, int NR>
inline void window_visibility(const TileMask<T>& tm, const Batch<T>* lo, const Batch<T>* hi, Index j,
                              BatchBool<T>* vis) {
  const Batch<T> jj = Batch<T>(static_cast<T>(j));
  for (int r = 0; r < NR; ++r) {
    if (tm.lo && tm.hi)
      vis[r] = (jj >= lo[r]) & (jj < hi[r]);
    else if (tm.lo)
      vis[r] = jj >= lo[r];
    else if (tm.hi)
      vis[r] = jj < hi[r];
    else
      vis[r] = jj == jj;
  }
}

/// Loads tm's per-row window edges into registers (unused when absent).
template <class T, int NR>
inline void load_window(const TileMask<T>& tm, Batch<T>* lo, Batch<T>* hi) {
  constexpr Index L = kLanes<T>;
  for (int r = 0; r < NR; ++r) {
    lo[r] = tm.lo ? load(tm.lo + r * L) : Batch<T>(T(0));
    hi[r] = tm.hi ? load(tm.hi + r * L) : Batch<T>(T(0));
  }
}

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
                                   const T* alpha, const TileMask<T>& mask, const Batch<T>* lo, const Batch<T>* hi) {
  constexpr Index L = kLanes<T>;
  const Batch<T> zero(T(0));
  Batch<T> acc[NX][NR];
  for (int x = 0; x < NX; ++x)
    for (int r = 0; r < NR; ++r) acc[x][r] = zero;
  for (Index t = 0; t < nt; ++t) {
    if (mask.keys && !mask.keys[t]) continue;  // no row sees this key
    Batch<T> a[NR];
    BatchBool<T> vis[NR];
    window_visibility<T, NR>(mask, lo, hi, t, vis);
    for (int r = 0; r < NR; ++r) a[r] = load(A + t * lda + r * L);
    const T* bp = B + t * bt;
    for (int x = 0; x < NX; ++x) {
      const Batch<T> b(bp[x]);
      for (int r = 0; r < NR; ++r) acc[x][r] = fmadd(xsimd::select(vis[r], b, zero), a[r], acc[x][r]);
    }
  }
  for (int x = 0; x < NX; ++x) {
    for (int r = 0; r < NR; ++r) {
      T* cp = Cp + x * ldc + r * L;
      store(cp, fmadd(load(cp), load(alpha + r * L), acc[x][r]));
    }
  }
}

/// The masked O^T update for any number nx of value columns (blocks of 2: the visibility masks take registers
/// the 4-column block of the plain kernel uses for accumulators).
template <class T, int NR>
inline void bcast_fma_masked(const T* A, Index lda, const T* B, Index bt, Index nt, Index nx, T* Cp, Index ldc,
                             const T* alpha, const TileMask<T>& mask) {
  Batch<T> lo[NR], hi[NR];
  load_window<T, NR>(mask, lo, hi);
  Index x = 0;
  for (; x + 2 <= nx; x += 2)
    bcast_fma_masked_block<T, 2, NR>(A, lda, B + x, bt, nt, Cp + x * ldc, ldc, alpha, mask, lo, hi);
  if (x < nx) bcast_fma_masked_block<T, 1, NR>(A, lda, B + x, bt, nt, Cp + x * ldc, ldc, alpha, mask, lo, hi);
}

// ---- bf16 pairs (q, k, v all bf16 where kPreferBf16Dot: vdpbf16ps) ----------------------------------------------
// The products of bcast_fma on operands packed as bf16 pairs of consecutive reduction indices in 32-bit lanes
// (dot_bf16_pairs' layout: index 2t in the low half, 2t + 1 in the high half), so one step covers two indices:
// C = sum over t of (C + A_odd B_odd) + A_even B_even, each addition rounded to float (the products are exact).

/// bcast_fma_block over pairs: C[x * ldc + r] (op)= the pair chain over t < nt of A[t * lda + r] and the broadcast
/// pair B[x * bx + t * bt], for x < NX and r < NR * kLanes; the same register blocking as bcast_fma_block.
template <int NX, int NR, Combine C>
inline void pair_dot_block(const std::uint32_t* A, Index lda, const std::uint32_t* B, Index bx, Index bt, Index nt,
                           float* Cp, Index ldc, const float* alpha) {
  constexpr Index L = kLanes<float>;
  using U = Batch<std::uint32_t>;
  Batch<float> acc[NX][NR];
  for (int x = 0; x < NX; ++x)
    for (int r = 0; r < NR; ++r) acc[x][r] = Batch<float>(0.0f);
  for (Index t = 0; t < nt; ++t) {
    U a[NR];
    for (int r = 0; r < NR; ++r) a[r] = U::load_aligned(A + t * lda + r * L);
    const std::uint32_t* bp = B + t * bt;
    for (int x = 0; x < NX; ++x) {
      const U b(bp[x * bx]);
      for (int r = 0; r < NR; ++r) acc[x][r] = dot_bf16_pairs(acc[x][r], a[r], b);
    }
  }
  for (int x = 0; x < NX; ++x) {
    for (int r = 0; r < NR; ++r) {
      float* cp = Cp + x * ldc + r * L;
      if constexpr (C == Combine::Store) {
        store(cp, acc[x][r]);
      } else {
        store(cp, fmadd(load(cp), load(alpha + r * L), acc[x][r]));
      }
    }
  }
}

/// pair_dot_block for any count nx of x (blocks as bcast_fma).
template <int NR, Combine C>
inline void pair_dot(const std::uint32_t* A, Index lda, const std::uint32_t* B, Index bx, Index bt, Index nt,
                     Index nx, float* Cp, Index ldc, const float* alpha) {
  Index x = 0;
  for (; x + kBlockCols <= nx; x += kBlockCols)
    pair_dot_block<kBlockCols, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha);
  if constexpr (kBlockCols > 4) {
    if (x + 4 <= nx) {
      pair_dot_block<4, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha);
      x += 4;
    }
  }
  switch (nx - x) {
    case 3: pair_dot_block<3, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha); break;
    case 2: pair_dot_block<2, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha); break;
    case 1: pair_dot_block<1, NR, C>(A, lda, B + x * bx, bx, bt, nt, Cp + x * ldc, ldc, alpha); break;
    default: break;
  }
}

/// The masked O^T update of bcast_fma_masked_block over pairs (A = the weights' pairs [nt][NR * L], key pair t of
/// column x at B[x + t * bt]; nb keys, so an odd nb leaves a padding key): the pair chain of pair_dot_block with the
/// V half of each hidden (row, key) cleared to +0 in that row's lane before the same dot_bf16_pairs, so inf or NaN
/// there is never multiplied. A hidden key's weight is an exact 0, so where V is finite the plain chain adds +-0
/// there to an accumulator that is never -0: the same bits as pair_dot_block, subnormal flushes included (it is the
/// same instruction).
template <int NX, int NR>
inline void pair_dot_masked_block(const std::uint32_t* A, Index lda, const std::uint32_t* B, Index bt, Index nt,
                                  Index nb, float* Cp, Index ldc, const float* alpha, const TileMask<float>& mask,
                                  const Batch<float>* lo, const Batch<float>* hi) {
  constexpr Index L = kLanes<float>;
  using U = Batch<std::uint32_t>;
  using F = Batch<float>;
  const F zero(0.0f), low_half(generic::bits_float(0x0000FFFFu)), high_half(generic::bits_float(0xFFFF0000u));
  F acc[NX][NR];
  for (int x = 0; x < NX; ++x)
    for (int r = 0; r < NR; ++r) acc[x][r] = zero;
  for (Index t = 0; t < nt; ++t) {
    const Index je = 2 * t, jo = 2 * t + 1;
    const bool key_e = !mask.keys || mask.keys[je];
    const bool key_o = jo < nb && (!mask.keys || mask.keys[jo]);
    if (!key_e && !key_o) continue;  // no row sees either key: the plain chain adds +-0 twice
    BatchBool<float> vis_e[NR], vis_o[NR];
    window_visibility<float, NR>(mask, lo, hi, je, vis_e);
    window_visibility<float, NR>(mask, lo, hi, jo, vis_o);
    U a[NR], keep[NR];  // keep: per row lane, the halves of a V pair that row may multiply
    for (int r = 0; r < NR; ++r) {
      a[r] = U::load_aligned(A + t * lda + r * L);
      const F ke = key_e ? xsimd::select(vis_e[r], low_half, zero) : zero;
      const F ko = key_o ? xsimd::select(vis_o[r], high_half, zero) : zero;
      keep[r] = reinterpret<std::uint32_t>(ke) | reinterpret<std::uint32_t>(ko);
    }
    const std::uint32_t* bp = B + t * bt;
    for (int x = 0; x < NX; ++x) {
      const U b(bp[x]);
      for (int r = 0; r < NR; ++r) acc[x][r] = dot_bf16_pairs(acc[x][r], a[r], b & keep[r]);
    }
  }
  for (int x = 0; x < NX; ++x) {
    for (int r = 0; r < NR; ++r) {
      float* cp = Cp + x * ldc + r * L;
      store(cp, fmadd(load(cp), load(alpha + r * L), acc[x][r]));
    }
  }
}

/// The masked pair update for any number nx of value columns (blocks of 2, as bcast_fma_masked).
template <int NR>
inline void pair_dot_masked(const std::uint32_t* A, Index lda, const std::uint32_t* B, Index bt, Index nt, Index nb,
                            Index nx, float* Cp, Index ldc, const float* alpha, const TileMask<float>& mask) {
  Batch<float> lo[NR], hi[NR];
  load_window<float, NR>(mask, lo, hi);
  Index x = 0;
  for (; x + 2 <= nx; x += 2)
    pair_dot_masked_block<2, NR>(A, lda, B + x, bt, nt, nb, Cp + x * ldc, ldc, alpha, mask, lo, hi);
  if (x < nx) pair_dot_masked_block<1, NR>(A, lda, B + x, bt, nt, nb, Cp + x * ldc, ldc, alpha, mask, lo, hi);
}

/// The weights tile P^T [nb][NR * L] (floats >= 0) as bf16 pairs of consecutive keys [ceil(nb / 2)][NR * L], each
/// weight rounded to nearest even (round_bf16_pairs; an odd nb pads with a zero weight). kSaturate: weights above
/// the largest bf16 (squared-ReLU weights can be) become the largest bf16 instead of inf.
template <int NR, bool kSaturate>
inline void pack_weight_pairs(const float* st, Index nb, std::uint32_t* pt) {
  constexpr Index L = kLanes<float>;
  constexpr Index W = NR * L;
  const Batch<float> zero(0.0f), top(generic::bits_float(0x7F7F0000u));
  for (Index t = 0; 2 * t < nb; ++t) {
    const float* pe = st + 2 * t * W;
    const bool has_odd = 2 * t + 1 < nb;
    for (int r = 0; r < NR; ++r) {
      Batch<float> e = load(pe + r * L), o = has_odd ? load(pe + W + r * L) : zero;
      if constexpr (kSaturate) e = xsimd::min(e, top), o = xsimd::min(o, top);
      round_bf16_pairs(e, o).store_aligned(pt + t * W + r * L);
    }
  }
}

/// One pass of softmax_tile_logits. kClamp false: the logits times rs are stored unclamped, and s * 0 is summed into
/// a finiteness witness that turns NaN at the first inf or NaN logit (one operation per register where the two
/// clamps took two); returns whether every logit was finite. kClamp true (rs unused): the logits the first pass
/// stored, already scaled, are clamped in place; returns true.
template <class T, int NR, bool kClamp>
inline bool softmax_tile_logits_pass(T* st, Index nb, const Batch<T>* rs, const TileMask<T>& mask, T* tmax) {
  constexpr Index L = kLanes<T>;
  constexpr Index W = NR * L;
  const Batch<T> big(std::numeric_limits<T>::max()), nbig(-std::numeric_limits<T>::max());
  const Batch<T> ninf(-std::numeric_limits<T>::infinity()), zero(T(0));
  Batch<T> mx[NR], lo[NR], hi[NR], witness[NR];
  load_window<T, NR>(mask, lo, hi);
  for (int r = 0; r < NR; ++r) mx[r] = ninf, witness[r] = zero;
  const auto scaled = [&](const T* sp, int r) {
    if constexpr (kClamp) {
      return xsimd::min(at_least<T>(load(sp + r * L), nbig), big);
    } else {
      const Batch<T> s = load(sp + r * L) * rs[r];
      witness[r] = fmadd(s, zero, witness[r]);
      return s;
    }
  };
  const bool window = mask.lo != nullptr || mask.hi != nullptr;
  for (Index j = 0; j < nb; ++j) {
    T* sp = st + j * W;
    if (mask.keys && !mask.keys[j]) {
      for (int r = 0; r < NR; ++r) store(sp + r * L, ninf);
      continue;
    }
    if (!window) {
      for (int r = 0; r < NR; ++r) {
        const Batch<T> s = scaled(sp, r);
        mx[r] = xsimd::max(mx[r], s);
        store(sp + r * L, s);
      }
      continue;
    }
    BatchBool<T> vis[NR];
    window_visibility<T, NR>(mask, lo, hi, j, vis);
    for (int r = 0; r < NR; ++r) {
      const Batch<T> s = xsimd::select(vis[r], scaled(sp, r), ninf);
      mx[r] = xsimd::max(mx[r], s);
      store(sp + r * L, s);
    }
  }
  if constexpr (!kClamp) {
    for (int r = 1; r < NR; ++r) witness[0] += witness[r];
    // isnan, not w != w: xsimd 8.1's != is an ordered compare (_CMP_NEQ_OQ), false for NaN.
    if (xsimd::any(xsimd::isnan(witness[0]))) return false;
  }
  for (int r = 0; r < NR; ++r) store(tmax + r * L, mx[r]);
  return true;
}

/// Online-softmax step 1 on a key tile S^T [nb][NR * L] (rows as lanes): logits *= rowscale (times
/// kSoftmaxLogitScale: the logit units of softmax_exp), clamped to the finite range (a +-inf or overflowing logit
/// must not turn s - max into inf - inf), masked keys set to -inf. Returns the tile's row maxima in tmax.
/// The clamps are needed only by a tile that holds an inf or NaN logit: the fast pass stores the scaled logits
/// unclamped and checks that they are finite; a tile that fails is clamped from the stored values (clamping
/// rowscale * s gives the same bits either way, and masked keys are set to -inf again).
template <class T, int NR>
inline void softmax_tile_logits(T* st, Index nb, const T* rowscale, const TileMask<T>& mask, T* tmax) {
  constexpr Index L = kLanes<T>;
  Batch<T> rs[NR];
  for (int r = 0; r < NR; ++r) rs[r] = load(rowscale + r * L) * Batch<T>(kSoftmaxLogitScale<T>);
  if (!softmax_tile_logits_pass<T, NR, false>(st, nb, rs, mask, tmax))
    softmax_tile_logits_pass<T, NR, true>(st, nb, rs, mask, tmax);
}

/// Online-softmax step 2: given the old running max m and the tile max, sets m to the new max, alpha to the
/// factor exp(m_old - m_new) that rescales the running sum and O, replaces S^T by P^T = exp(S^T - m_new)
/// (softmax_exp, in the logit units of step 1) and updates the running sum l = l * alpha + sum_j P. A row that has
/// seen no visible key yet keeps m = -inf; its shift is taken as 0 so that exp(-inf - shift) = 0 and no inf - inf
/// appears.
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
    store(alpha + r * L, softmax_exp<T>(mold - shift[r]));
    store(m + r * L, mnew);
    sum[r] = Batch<T>(T(0));
  }
  for (Index j = 0; j < nb; ++j) {
    T* sp = st + j * W;
    for (int r = 0; r < NR; ++r) {
      const Batch<T> p = softmax_exp<T>(load(sp + r * L) - shift[r]);
      sum[r] += p;
      store(sp + r * L, p);
    }
  }
  for (int r = 0; r < NR; ++r) store(l + r * L, fmadd(load(l + r * L), load(alpha + r * L), sum[r]));
}

/// Squared-ReLU tile: S^T <- relu(scale * S^T)^2, masked keys 0. The 1/L normalisation is applied once at the end.
template <class T, int NR>
inline void relu2_tile(T* st, Index nb, T scale, const TileMask<T>& mask) {
  constexpr Index L = kLanes<T>;
  constexpr Index W = NR * L;
  const Batch<T> vs(scale), zero(T(0));
  Batch<T> lo[NR], hi[NR];
  load_window<T, NR>(mask, lo, hi);
  const bool window = mask.lo != nullptr || mask.hi != nullptr;
  for (Index j = 0; j < nb; ++j) {
    T* sp = st + j * W;
    if (mask.keys && !mask.keys[j]) {
      for (int r = 0; r < NR; ++r) store(sp + r * L, zero);
      continue;
    }
    BatchBool<T> vis[NR];
    if (window) window_visibility<T, NR>(mask, lo, hi, j, vis);
    for (int r = 0; r < NR; ++r) {
      const Batch<T> a = at_least<T>(load(sp + r * L) * vs, zero);
      Batch<T> p = a * a;
      if (window) p = xsimd::select(vis[r], p, zero);
      store(sp + r * L, p);
    }
  }
}

/// O_r = O_r * alpha_r + sum_{j < nb, p_r[j] != 0} p_r[j] V_j over the columns [0, NC * L) of O and V, for the NW
/// query rows r of one block: the P V step of the one-row kernel with the V rows shared by the rows. Each V
/// register is loaded once per key and used by all NW rows; O stays in NW x NC registers for the whole key chunk
/// (8 accumulators at NW = 4, NC = 2, so the FMA latency chain through one O register is hidden by the others
/// instead of going through a store and a reload per key). Per row and column this is exactly the sequence of
/// scale() and axpy() calls it replaces: O * alpha when alpha != 1, then fma(p, v, O) key by key in key order,
/// skipping keys of weight exactly 0 (hidden keys: their V row may hold inf or NaN and is never combined).
/// kSkip = false: the caller knows no weight of these rows is 0 (no test per key).
/// V may be stored as S (a 16-bit KV cache): each V register is widened as it is loaded (exact, so the bits are
/// those of the widened V).
template <class T, int NW, int NC, bool kSkip, class S>
inline void pv_rows_block(const T* const* p, const S* v, Index ldv, Index nb, T* const* o, const T* alpha) {
  constexpr Index L = kLanes<T>;
  Batch<T> acc[NW][NC];
  for (int r = 0; r < NW; ++r) {
    const Batch<T> a(alpha[r]);
    for (int c = 0; c < NC; ++c) {
      acc[r][c] = load(o[r] + c * L);
      if (alpha[r] != T(1)) acc[r][c] = acc[r][c] * a;
    }
  }
  for (Index j = 0; j < nb; ++j) {
    Batch<T> vb[NC];
    for (int c = 0; c < NC; ++c) vb[c] = load_as<T>(v + j * ldv + c * L);
    for (int r = 0; r < NW; ++r) {
      const T pr = p[r][j];
      if (kSkip && pr == T(0)) continue;
      const Batch<T> b(pr);
      for (int c = 0; c < NC; ++c) acc[r][c] = fmadd(b, vb[c], acc[r][c]);
    }
  }
  for (int r = 0; r < NW; ++r)
    for (int c = 0; c < NC; ++c) store(o[r] + c * L, acc[r][c]);
}

/// pv_rows_block for NW rows over all dv columns: blocks of about kVectorRegisters / 2 / NW registers (8 accumulators
/// in flight with 16 registers, 16 with 32, when dv allows: the 4-cycle FMA latency of each O register's chain over
/// the keys is covered, and with 32 registers each weight is broadcast half as often), then
/// blocks of half, a quarter, ... of that down to single registers (so that dv = 64 with 16-float registers still
/// runs as one 4-register block, not two latency-bound 2-register ones), then scalar columns (the scalar tails of
/// scale() and axpy(), same expressions). Each column takes the same operations in the same order whatever block
/// it falls in, so the block sizes never change a result.
template <class T, int NW, bool kSkip,
          int NC = (NW >= 4 ? kVectorRegisters / 8 : std::min(8, kVectorRegisters / 2 / NW / 2 * 2)), class S>
inline void pv_rows(const T* const* p, const S* v, Index ldv, Index nb, Index dv, T* const* o, const T* alpha,
                    Index c = 0) {
  constexpr Index L = kLanes<T>;
  T* oc[NW];
  for (; c + NC * L <= dv; c += NC * L) {
    for (int r = 0; r < NW; ++r) oc[r] = o[r] + c;
    pv_rows_block<T, NW, NC, kSkip, S>(p, v + c, ldv, nb, oc, alpha);
  }
  if constexpr (NC > 1) {
    pv_rows<T, NW, kSkip, NC / 2, S>(p, v, ldv, nb, dv, o, alpha, c);
  } else {
    for (; c < dv; ++c) {
      for (int r = 0; r < NW; ++r) {
        T* y = o[r] + c;
        if (alpha[r] != T(1)) *y *= alpha[r];
        for (Index j = 0; j < nb; ++j) {
          const T pr = p[r][j];
          if (kSkip && pr == T(0)) continue;
          *y = madd(pr, as_compute<T>(v[j * ldv + c]), *y);
        }
      }
    }
  }
}

/// Hints the cache lines of x[0, n) into the cache (no effect on results; never faults).
template <class T>
inline void prefetch_row(const T* x, Index n) {
#if defined(__GNUC__) || defined(__clang__)
  const char* c = reinterpret_cast<const char*>(x);
  for (Index off = 0; off < Index(sizeof(T)) * n; off += 64) __builtin_prefetch(c + off);
#else
  (void)x;
  (void)n;
#endif
}

/// q . k for one key in the one-row kernel's order: one accumulator over the whole registers of the row, in order,
/// its lanes summed by reduce_add, then the scalar tail with madd. One chain per key instead of dot()'s four
/// accumulators: the kernel runs kLanes keys side by side (dot_rows_lanes), which already gives the FMA pipes enough
/// independent chains, and at d = 64 with 16-float registers dot()'s three combining adds per key would cost
/// three quarters as much as its four FMAs. k may be a 16-bit cache row (widened exactly as it is loaded).
template <class T, class S>
inline T dot_chain(const T* q, const S* k, Index d) {
  constexpr Index L = kLanes<T>;
  Index i = 0;
  T s = T(0);
  if (d >= L) {
    Batch<T> acc = load(q) * load_as<T>(k);
    for (i = L; i + L <= d; i += L) acc = fmadd(load(q + i), load_as<T>(k + i), acc);
    s = reduce_add<T>(acc);
  }
  for (; i < d; ++i) s = madd(q[i], as_compute<T>(k[i]), s);
  return s;
}

/// Query rows per block of the one-row kernel's q.k: each K register is loaded once for this many rows (their
/// accumulators, one per row, plus the K register fit the 16 registers of AVX2 with the q operands from L1).
constexpr int kDotRows = 4;

/// q_r . k_u for NR query rows q[r] and the kLanes<T> keys k_u = k + u * ldk (T or a 16-bit type), as one batch per
/// row in out[r], each lane with the bits of dot_chain(q[r], k_u, d). d must be a multiple of kLanes<T> (no scalar
/// tail). Key by key, each register of k_u is loaded (and widened) once and multiplied into the NR rows' chains;
/// the final horizontal sums are done for all keys of a row together (reduce_add_lanes).
template <class T, int NR, Index kD, class S>
inline void dot_rows_lanes(const T* const* q, const S* k, Index ldk, Index d_runtime, Batch<T>* out) {
  constexpr Index L = kLanes<T>;
  const Index d = kD > 0 ? kD : d_runtime;  // kD > 0: the common head sizes, loops fully unrolled
  Batch<T> t[NR][L];
  for (Index u = 0; u < L; ++u) {
    const S* ku = k + u * ldk;
    const Batch<T> k0 = load_as<T>(ku);
    Batch<T> acc[NR];
    for (int r = 0; r < NR; ++r) acc[r] = load(q[r]) * k0;
    for (Index i = L; i < d; i += L) {
      const Batch<T> ki = load_as<T>(ku + i);
      for (int r = 0; r < NR; ++r) acc[r] = fmadd(load(q[r] + i), ki, acc[r]);
    }
    for (int r = 0; r < NR; ++r) t[r][u] = acc[r];
  }
  for (int r = 0; r < NR; ++r) out[r] = reduce_add_lanes<T>(t[r]);
}

/// dot_rows_lanes for nr (1 to kDotRows) rows, with the loops unrolled for the common head sizes d = 64 and 128.
template <class T, class S>
inline void dot_rows_lanes_any(int nr, const T* const* q, const S* k, Index ldk, Index d, Batch<T>* out) {
  auto with_rows = [&](auto nr_tag) {
    constexpr int NR = decltype(nr_tag)::value;
    if (d == 64)
      dot_rows_lanes<T, NR, 64>(q, k, ldk, d, out);
    else if (d == 128)
      dot_rows_lanes<T, NR, 128>(q, k, ldk, d, out);
    else
      dot_rows_lanes<T, NR, 0>(q, k, ldk, d, out);
  };
  static_assert(kDotRows == 4, "one case per row count");
  switch (nr) {
    case 4: with_rows(std::integral_constant<int, 4>()); break;
    case 3: with_rows(std::integral_constant<int, 3>()); break;
    case 2: with_rows(std::integral_constant<int, 2>()); break;
    default: with_rows(std::integral_constant<int, 1>()); break;
  }
}

/// rows x n values of src (row stride lds, 16-bit or T) into dst (row stride ldd) as T: exact widening
/// (arch/ops.hpp's load_as), or a plain copy when the types agree.
template <class T, class S>
inline void widen_rows(const S* src, Index lds, Index rows, Index n, T* dst, Index ldd) {
  constexpr Index L = kLanes<T>;
  for (Index r = 0; r < rows; ++r) {
    const S* x = src + r * lds;
    T* y = dst + r * ldd;
    Index i = 0;
    for (; i + L <= n; i += L) store(y + i, load_as<T>(x + i));
    for (; i < n; ++i) y[i] = as_compute<T>(x[i]);
  }
}

/// Per-thread scratch of the one-row kernel: o (dv per row), the weights of the current key chunk (kChunk per
/// row) and the per-row online-softmax state. Grown on first use for a row count and (dv, kChunk), then reused.
template <class T>
struct RowSetScratch {
  AlignedVector<T> o, p, state;
  std::vector<unsigned char> active;
  void ensure(Index rows, Index dv, Index chunk) {
    if (Index(o.size()) < rows * dv) o.resize(static_cast<std::size_t>(rows * dv));
    if (Index(p.size()) < rows * chunk) p.resize(static_cast<std::size_t>(rows * chunk));
    if (Index(state.size()) < 4 * rows) state.resize(static_cast<std::size_t>(4 * rows));
    if (Index(active.size()) < rows) active.resize(static_cast<std::size_t>(rows));
  }
};

/// A set of query rows that attend to the same keys k/v (and the same key mask): the rows of one decoding step
/// for every query head of a KV group (grouped-query / multi-query attention), or the one or two rows of a
/// small work item. Row r: q[r] (d values), out[r] (dv values), visible keys [lo[r], lim[r]) before the mask
/// (lo null: 0), logit factor rowscale[r] and SquaredRelu 1/L relu2_inv[r].
template <class T>
struct RowSet {
  Index rows = 0;
  const T* const* q = nullptr;
  T* const* out = nullptr;
  const Index* lo = nullptr;
  const Index* lim = nullptr;
  const T* rowscale = nullptr;
  const T* relu2_inv = nullptr;
};

/// The one-row kernel: every row of the set against keys [lo[r], lim[r]) with online softmax (or squared ReLU),
/// for work items of very few rows per head, where the rows-as-lanes tile would waste all but one or two lanes
/// (the KV-cache decoding step, n = 1). Vectorised along d for q.k, along dv for P V, exp over the key chunk.
///
/// The rows share one pass over the keys: each key chunk's K rows are read from memory once and dotted with
/// every row's q while they sit in L1 (kDotRows rows per K register load), and each V row once for the P V update
/// of all rows (pv_rows). Each
/// row's arithmetic is nevertheless exactly that of a set holding that row alone: the same dot_chain() per key, the
/// same chunk boundaries (multiples of kChunk from key 0), the same online-softmax update per chunk and the same
/// per-element fma sequence for O, only interleaved across rows. So the grouped decode of a GQA/MQA step gives
/// each head the bits it gets when run alone, and they do not depend on how the heads are grouped.
/// A row starts at the chunk holding its own lo and stops at its own lim: chunks outside give it weight 0 and no
/// rescale (so a row's bits do not depend on the other rows of the set). Keys it cannot see (masked, before lo,
/// past lim) get weight exactly 0 and their V rows are skipped, so inf or NaN there never reaches it.
///
/// 16-bit K/V (S = Eigen::half / Eigen::bfloat16, T = float: a 16-bit KV cache): every K and V register is widened
/// (exactly) as it is loaded, so every row gets the float kernel's bits on the widened cache while memory traffic
/// is the 16-bit bytes, with no copy: a decoding step is bound by the cache read and the work per key.
template <class T, Index kChunk, class S>
inline void attention_rows(const RowSet<T>& set, Index d, const S* k, Index ldk, const S* v, Index ldv, Index dv,
                           const unsigned char* mask, bool relu2, RowSetScratch<T>& s) {
  constexpr Index L = kLanes<T>;
  static_assert(kChunk % L == 0, "the key chunk must be whole registers");
  const T ninf = -std::numeric_limits<T>::infinity();
  const T big = std::numeric_limits<T>::max();
  const Index R = set.rows;
  s.ensure(R, dv, kChunk);
  T* mrow = s.state.data();
  T* lrow = mrow + R;
  T* alpha = lrow + R;
  T* cmax = alpha + R;
  unsigned char* active = s.active.data();
  Index jmax = 0, jmin = std::numeric_limits<Index>::max();
  auto lo_of = [&](Index r) { return set.lo ? set.lo[r] : Index(0); };
  for (Index r = 0; r < R; ++r) {
    std::fill(s.o.data() + r * dv, s.o.data() + (r + 1) * dv, T(0));
    mrow[r] = ninf;
    lrow[r] = T(0);
    jmax = std::max(jmax, set.lim[r]);
    if (set.lim[r] > lo_of(r)) jmin = std::min(jmin, lo_of(r));
  }
  // Chunks are aligned to multiples of kChunk from key 0 whatever the rows: a row's chunks are the same alone.
  const Index jstart = jmin < jmax ? jmin / kChunk * kChunk : jmax;
  auto prow = [&](Index r) { return s.p.data() + r * kChunk; };
  const bool vec_dot = d % L == 0;
  auto orow = [&](Index r) { return s.o.data() + r * dv; };

  for (Index j0 = jstart; j0 < jmax; j0 += kChunk) {
    const Index nb_all = std::min(kChunk, jmax - j0);
    // The chunk's K rows kc[u * ldk] and V rows vc[u * ldv], u < nb_all, in the caller's type: a 16-bit cache is
    // widened in registers as the dot products and P V load it (exact), never copied.
    const S* kc = k + j0 * ldk;
    const S* vc = v + j0 * ldv;
    bool all_active = true;
    for (Index r = 0; r < R; ++r) {
      const Index lo = lo_of(r) - j0;  // first visible key of the chunk (may be <= 0)
      active[r] = j0 < set.lim[r] && lo < kChunk && lo < set.lim[r] - j0;
      all_active &= active[r] != 0;
      if (!active[r]) std::fill(prow(r), prow(r) + kChunk, T(0));
    }
    // Logits, kDotRows rows at a time: each register of K is loaded (and widened) once for the rows of the block,
    // and the chunk's K rows (kChunk x d) come from memory for the first block and from L1 for the others.
    for (Index r0 = 0; r0 < R; r0 += kDotRows) {
      const int nr = int(std::min<Index>(kDotRows, R - r0));
      const T* qb[kDotRows];
      Index lob[kDotRows], nbb[kDotRows];
      T cm[kDotRows];
      Batch<T> vcm[kDotRows], sv[kDotRows];
      for (int i = 0; i < nr; ++i) {
        qb[i] = set.q[r0 + i];
        lob[i] = lo_of(r0 + i) - j0;
        nbb[i] = std::min(kChunk, set.lim[r0 + i] - j0);
        cm[i] = ninf;
        vcm[i] = Batch<T>(ninf);
      }
      const Batch<T> vbig(big), vnbig(-big), vzero(T(0));
      for (Index j = 0; j < kChunk; j += L) {
        if (r0 == 0) {
          // While the first block's dot products run, fetch this chunk's V rows (next: P V) and the next chunk's
          // K rows: the hardware prefetcher alone leaves the core waiting on each chunk when the cache is in DRAM.
          for (Index u = j; u < j + L; ++u) {
            if (u < nb_all) prefetch_row(v + (j0 + u) * ldv, dv);
            if (j0 + kChunk + u < jmax) prefetch_row(k + (j0 + kChunk + u) * ldk, d);
          }
        }
        // Rows whose L keys from j are all visible take the vector path (dot_rows_lanes), the others key by key
        // the scalar one. Both give every key the bits of dot_chain(); the clamps below are std::max / std::min /
        // the relu2 ternary lane by lane (at_least: a NaN logit becomes the most negative one, as in the scalar code).
        bool group_visible = vec_dot && j + L <= nb_all;
        if (group_visible && mask)
          for (Index u = j; u < j + L; ++u) group_visible &= mask[j0 + u] != 0;
        bool whole[kDotRows], any_whole = false;
        for (int i = 0; i < nr; ++i) {
          whole[i] = group_visible && active[r0 + i] && j + L <= nbb[i] && j >= lob[i];
          any_whole |= whole[i];
        }
        if (any_whole) dot_rows_lanes_any<T>(nr, qb, kc + j * ldk, ldk, d, sv);
        for (int i = 0; i < nr; ++i) {
          const Index r = r0 + i;
          if (!active[r]) continue;
          T* sb = prow(r);
          const T rs = set.rowscale[r];
          if (whole[i]) {
            Batch<T> x = sv[i] * Batch<T>(rs);
            if (relu2) {
              x = at_least<T>(x, vzero);
              x = x * x;
            } else {
              x = xsimd::min(at_least<T>(x, vnbig), vbig);
              vcm[i] = xsimd::max(vcm[i], x);
            }
            store(sb + j, x);
            continue;
          }
          for (Index u = j; u < j + L; ++u) {
            if (u >= nbb[i] || u < lob[i] || (mask && !mask[j0 + u])) {
              sb[u] = relu2 ? T(0) : ninf;
              continue;
            }
            T x = dot_chain(qb[i], kc + u * ldk, d) * rs;
            if (relu2) {
              x = T(0) < x ? x : T(0);
              x = x * x;
            } else {
              x = -big < x ? std::min(x, big) : -big;
              cm[i] = std::max(cm[i], x);
            }
            sb[u] = x;
          }
        }
      }
      for (int i = 0; i < nr; ++i) {
        if (!relu2) {
          alignas(64) T lanes[L];
          store(lanes, vcm[i]);
          for (Index u = 0; u < L; ++u) cm[i] = std::max(cm[i], lanes[u]);
        }
        cmax[r0 + i] = cm[i];
      }
    }
    // Online-softmax update of each active row (the inactive ones keep their state and get weights 0).
    bool any_zero = !all_active;
    for (Index r = 0; r < R; ++r) {
      alpha[r] = T(1);
      T* sb = prow(r);
      if (!relu2 && active[r]) {
        const T mnew = std::max(mrow[r], cmax[r]);
        const T shift = mnew == ninf ? T(0) : mnew;
        alpha[r] = scalar_exp(mrow[r] - shift);
        Batch<T> sum(T(0));
        const Batch<T> vshift(shift);
        // A weight of exactly 0 among the keys the P V loop visits ([0, nb_all)) needs its per-key test.
        BatchBool<T> zero_seen = sum != sum;  // all false (sum is 0)
        for (Index j = 0; j < kChunk; j += L) {
          const Batch<T> pj = fast_exp<T, true>(load(sb + j) - vshift);
          sum += pj;
          store(sb + j, pj);
          if (j < nb_all) zero_seen = zero_seen | (pj == Batch<T>(T(0)));
        }
        lrow[r] = lrow[r] * alpha[r] + reduce_add<T>(sum);
        mrow[r] = mnew;
        // (lanes past nb_all are exactly 0 and may set this too: that only costs the tested loop)
        any_zero = any_zero || xsimd::any(zero_seen);
        continue;
      }
      for (Index j = 0; j < nb_all && !any_zero; ++j) any_zero = sb[j] == T(0);
    }
    // P V, NW rows at a time; only a block with a zero weight somewhere pays for the per-key test.
    const T* pp[4];
    T* op[4];
    // Rows [r, r + NW) as one block.
    auto block = [&](Index r, auto nw_tag) {
      constexpr int NW = decltype(nw_tag)::value;
      for (int i = 0; i < NW; ++i) {
        pp[i] = prow(r + i);
        op[i] = orow(r + i);
      }
      if (any_zero)
        pv_rows<T, NW, true>(pp, vc, ldv, nb_all, dv, op, alpha + r);
      else
        pv_rows<T, NW, false>(pp, vc, ldv, nb_all, dv, op, alpha + r);
    };
    Index r = 0;
    for (; r + 4 <= R; r += 4) block(r, std::integral_constant<int, 4>());
    switch (R - r) {
      case 3: block(r, std::integral_constant<int, 3>()); break;
      case 2: block(r, std::integral_constant<int, 2>()); break;
      case 1: block(r, std::integral_constant<int, 1>()); break;
      default: break;
    }
  }
  for (Index r = 0; r < R; ++r) {
    const T f = relu2 ? set.relu2_inv[r] : (lrow[r] > T(0) ? T(1) / lrow[r] : T(0));
    const T* o = orow(r);
    T* out = set.out[r];
    for (Index e = 0; e < dv; ++e) out[e] = o[e] * f;
  }
}

}  // namespace kexue::detail
