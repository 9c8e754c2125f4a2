// SPDX-License-Identifier: MIT
#pragma once
// The SIMD core of GlobalPointer (SPEC 2.2, 2.6): a register-blocked q . k^T micro-kernel over packed
// operands, and the strip routine that turns its tiles into masked scores for one or more heads.
//
// Layout of the packed operands (scratch owned by the caller):
//   q: the rotated rows, [round_up(n, kRows)][d], rows past n are zero, so the micro-kernel never has a
//      row tail;
//   k: the rotated rows transposed into column panels of kCols columns, panel p = [d][kCols] contiguous,
//      columns past n are zero. One panel row is two registers, read once per d step for six q rows.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kexue/detail/arch/ops.hpp"  // fmadd: one rounding wherever kFusedFma (xsimd 8.1's AVX-512 fma is two)
#include "kexue/detail/simd.hpp"

namespace kexue {

/// The masking convention of the score matrix (SPEC 2.2, 2.3). Scores at valid cells (j >= i, both
/// < length) are identical under all three; they differ at masked cells.
enum class MaskConvention {
  /// bert4keras since 2023-03-06: scale, then where(keep, S, fill); fill is GlobalPointerOptions::fill.
  Current,
  /// bert4keras 2021-04-23 .. 2023-03-06. GlobalPointer: padding rows and columns set to -M
  /// (x * mask - M * (1 - mask), rows then columns), the strict lower triangle minus M, then the scale.
  /// EfficientGlobalPointer: scale the dot product, add the biases, then the same -M masking.
  /// M is GlobalPointerOptions::legacy_magnitude (K.infinity(), 1e12).
  Bert4keras2021,
  /// The common PyTorch ports (gaohongkui style): padding masked on the column axis only
  /// (x * pad - M * (1 - pad)), strict lower triangle minus M, then the scale (GlobalPointer) or, for
  /// EfficientGlobalPointer, the scaled dot product plus biases masked the same way (UNCONFIRMED in SPEC).
  TorchPort,
};

namespace detail {

/// Rows of the register tile: 6 rows x 2 registers = 12 accumulators, plus 2 panel registers and one
/// broadcast = 15 of the 16 ymm registers. 12 independent FMA chains cover the 2 ports x 4 cycles of
/// latency with room to spare, and each d step issues 2 panel loads + 6 broadcasts for 12 FMAs, well
/// within the two load ports.
constexpr Index kGpRows = 6;
/// Columns of the register tile: two registers.
template <class T>
constexpr Index kGpCols = 2 * kLanes<T>;

/// Row blocks per parallel work item: 24 rows of 512 columns is ~50 k FMAs on average, large enough to
/// hide the scheduling cost and small enough to balance the triangle's uneven rows over two threads.
constexpr Index kGpBlocksPerItem = 4;

inline Index gp_round_up(Index n, Index m) { return (n + m - 1) / m * m; }

/// tile[r][c] = sum_t q[r][t] * panel[t][c] for r < kGpRows, c < kGpCols; row r is stored at
/// tile + r * ld, multiplied by `scale` (1 for the raw products the general epilogue needs). The
/// single-head interior tiles store straight from the registers into the scores.
template <class T>
inline void gp_micro(const T* q, const T* panel, Index d, T* tile, Index ld, T scale) {
  using B = Batch<T>;
  constexpr Index L = kLanes<T>, NR = kGpCols<T>;
  B c00(T(0)), c01(T(0)), c10(T(0)), c11(T(0)), c20(T(0)), c21(T(0));
  B c30(T(0)), c31(T(0)), c40(T(0)), c41(T(0)), c50(T(0)), c51(T(0));
  const T* q0 = q;
  const T* q1 = q + d;
  const T* q2 = q + 2 * d;
  const T* q3 = q + 3 * d;
  const T* q4 = q + 4 * d;
  const T* q5 = q + 5 * d;
  for (Index t = 0; t < d; ++t) {
    const B b0 = load(panel + t * NR), b1 = load(panel + t * NR + L);
    B a(q0[t]);
    c00 = fmadd(a, b0, c00);
    c01 = fmadd(a, b1, c01);
    a = B(q1[t]);
    c10 = fmadd(a, b0, c10);
    c11 = fmadd(a, b1, c11);
    a = B(q2[t]);
    c20 = fmadd(a, b0, c20);
    c21 = fmadd(a, b1, c21);
    a = B(q3[t]);
    c30 = fmadd(a, b0, c30);
    c31 = fmadd(a, b1, c31);
    a = B(q4[t]);
    c40 = fmadd(a, b0, c40);
    c41 = fmadd(a, b1, c41);
    a = B(q5[t]);
    c50 = fmadd(a, b0, c50);
    c51 = fmadd(a, b1, c51);
  }
  const B vs(scale);
  store(tile + 0 * ld, c00 * vs);
  store(tile + 0 * ld + L, c01 * vs);
  store(tile + 1 * ld, c10 * vs);
  store(tile + 1 * ld + L, c11 * vs);
  store(tile + 2 * ld, c20 * vs);
  store(tile + 2 * ld + L, c21 * vs);
  store(tile + 3 * ld, c30 * vs);
  store(tile + 3 * ld + L, c31 * vs);
  store(tile + 4 * ld, c40 * vs);
  store(tile + 4 * ld + L, c41 * vs);
  store(tile + 5 * ld, c50 * vs);
  store(tile + 5 * ld + L, c51 * vs);
}

/// [0, 1, ..., L-1].
template <class T>
inline Batch<T> gp_iota() {
  alignas(64) T v[kLanes<T>];
  for (Index i = 0; i < kLanes<T>; ++i) v[i] = T(i);
  return load(v);
}

/// Copies column values into panel layout: panel p holds columns [p*NR, p*NR+NR) as [d][NR].
/// `row(j)` returns a pointer to the d values of column j (a rotated k row).
template <class T>
inline void gp_pack_column(T* packed, Index d, Index j, const T* values) {
  constexpr Index NR = kGpCols<T>;
  T* dst = packed + (j / NR) * d * NR + (j % NR);
  for (Index t = 0; t < d; ++t) dst[t * NR] = values[t];
}

/// Zeroes the padding columns [n, round_up(n, NR)) of the last panel.
template <class T>
inline void gp_pack_pad(T* packed, Index n, Index d) {
  constexpr Index NR = kGpCols<T>;
  for (Index j = n; j < gp_round_up(n, NR); ++j) {
    T* dst = packed + (j / NR) * d * NR + (j % NR);
    for (Index t = 0; t < d; ++t) dst[t * NR] = T(0);
  }
}

/// Sizes of the packed operands for n rows of d values.
inline Index gp_q_size(Index n, Index d) { return gp_round_up(n, kGpRows) * d; }
template <class T>
inline Index gp_k_size(Index n, Index d) {
  return gp_round_up(n, kGpCols<T>) * d;
}

/// One output head of a strip: the score matrix rows (row i at out + i * ld) and, for Efficient
/// GlobalPointer, the per-row (start) and per-column (end) bias vectors of that head (null: none).
template <class T>
struct GpOut {
  T* out = nullptr;
  Index ld = 0;
  const T* row_bias = nullptr;
  const T* col_bias = nullptr;
};

/// How tiles become scores (see MaskConvention).
template <class T>
struct GpParams {
  Index n = 0, d = 0, length = 0;
  T scale = T(1);
  T fill = -std::numeric_limits<T>::infinity();
  T magnitude = T(1e12);
  bool tril = true;
  bool efficient = false;  // scale the dot product only and add the biases before masking (SPEC 2.6)
  MaskConvention convention = MaskConvention::Current;
};

/// The score of one cell from its raw dot product s, written for clarity: it serves every tile that is
/// not entirely inside the kept region, and every cell of the legacy conventions.
template <class T>
inline T gp_cell(const GpParams<T>& p, T s, T rb, T cb, Index i, Index j) {
  const bool rv = i < p.length, cv = j < p.length, upper = !p.tril || j >= i;
  if (p.efficient) {
    const T x = s * p.scale + rb + cb;
    switch (p.convention) {
      case MaskConvention::Current:
        return rv && cv && upper ? x : p.fill;
      case MaskConvention::Bert4keras2021: {
        T y = rv && cv ? x : -p.magnitude;
        return upper ? y : y - p.magnitude;
      }
      case MaskConvention::TorchPort: {
        T y = cv ? x : -p.magnitude;
        return upper ? y : y - p.magnitude;
      }
    }
  }
  switch (p.convention) {
    case MaskConvention::Current:
      return rv && cv && upper ? s * p.scale : p.fill;
    case MaskConvention::Bert4keras2021: {
      T y = rv && cv ? s : -p.magnitude;
      if (!upper) y -= p.magnitude;
      return y * p.scale;
    }
    case MaskConvention::TorchPort: {
      T y = cv ? s : -p.magnitude;
      if (!upper) y -= p.magnitude;
      return y * p.scale;
    }
  }
  return p.fill;
}

inline void gp_fill(float* x, Index n, float v) { std::fill(x, x + n, v); }
inline void gp_fill(double* x, Index n, double v) { std::fill(x, x + n, v); }

/// Rows [i0, min(i0 + kGpRows, n)) of every head in `outs`, all sharing the packed q (its row block at
/// qpack + i0 * d) and the packed k. Under MaskConvention::Current only the kept region is multiplied:
/// panels left of the diagonal (when tril) and right of `length` are written as fill without a product,
/// and rows past `length` are filled whole. The legacy conventions need the product at every cell.
template <class T>
inline void gp_strip(const GpParams<T>& p, const T* qpack, const T* kpack, Index i0, const GpOut<T>* outs,
                     Index heads) {
  constexpr Index NR = kGpCols<T>, L = kLanes<T>;
  using B = Batch<T>;
  const Index n = p.n, d = p.d;
  const Index i_end = std::min(i0 + kGpRows, n);
  const T* qb = qpack + i0 * d;
  alignas(64) T tile[kGpRows * NR];

  if (p.convention != MaskConvention::Current) {
    for (Index j0 = 0; j0 < n; j0 += NR) {
      gp_micro(qb, kpack + j0 * d, d, tile, NR, T(1));
      const Index j_end = std::min(j0 + NR, n);
      for (Index a = 0; a < heads; ++a) {
        const GpOut<T>& o = outs[a];
        for (Index i = i0; i < i_end; ++i) {
          T* row = o.out + i * o.ld;
          const T rb = o.row_bias ? o.row_bias[i] : T(0);
          for (Index j = j0; j < j_end; ++j)
            row[j] = gp_cell(p, tile[(i - i0) * NR + (j - j0)], rb, o.col_bias ? o.col_bias[j] : T(0), i, j);
        }
      }
    }
    return;
  }

  const Index len = p.length;
  // Rows past length: fill only.
  for (Index a = 0; a < heads; ++a)
    for (Index i = std::max(i0, len); i < i_end; ++i) gp_fill(outs[a].out + i * outs[a].ld, n, p.fill);
  if (i0 >= len) return;
  const Index rows = std::min(i_end, len) - i0;  // rows of this block that hold scores
  const Index p_begin = p.tril ? i0 / NR : 0;
  const Index c_begin = p_begin * NR;                    // first column that gets a product
  const Index c_end = std::min(gp_round_up(len, NR), n);  // one past the last
  for (Index a = 0; a < heads; ++a) {
    for (Index r = 0; r < rows; ++r) {
      T* row = outs[a].out + (i0 + r) * outs[a].ld;
      gp_fill(row, c_begin, p.fill);
      gp_fill(row + c_end, n - c_end, p.fill);
    }
  }
  const B vscale(p.scale);
  for (Index j0 = c_begin; j0 < len; j0 += NR) {
    // A tile is entirely kept when every row is a score row, every column is < length, and (with the
    // triangle) its first column is at or right of its last row.
    const bool full = rows == kGpRows && j0 + NR <= len && (!p.tril || j0 >= i0 + kGpRows - 1);
    if (full && heads == 1 && !outs[0].row_bias && !outs[0].col_bias) {
      gp_micro(qb, kpack + j0 * d, d, outs[0].out + i0 * outs[0].ld + j0, outs[0].ld, p.scale);
      continue;
    }
    gp_micro(qb, kpack + j0 * d, d, tile, NR, T(1));
    for (Index a = 0; a < heads; ++a) {
      const GpOut<T>& o = outs[a];
      if (full) {
        B cb0(T(0)), cb1(T(0));
        if (o.col_bias) {
          cb0 = load(o.col_bias + j0);
          cb1 = load(o.col_bias + j0 + L);
        }
        for (Index r = 0; r < kGpRows; ++r) {
          T* dst = o.out + (i0 + r) * o.ld + j0;
          const B rb(o.row_bias ? o.row_bias[i0 + r] : T(0));
          store(dst, fmadd(load(tile + r * NR), vscale, cb0 + rb));
          store(dst + L, fmadd(load(tile + r * NR + L), vscale, cb1 + rb));
        }
      } else if (j0 + NR <= n) {
        // Diagonal and length-crossing tiles, vectorised with a keep mask per register: there is one of
        // them per row block, and a scalar loop over its cells would cost more than its products.
        const B j_lo = B(T(j0)) + gp_iota<T>();
        const B j_hi = j_lo + B(T(L));
        const B vlen = B(T(len)), vfill = B(p.fill);
        B cb0(T(0)), cb1(T(0));
        if (o.col_bias) {
          cb0 = load(o.col_bias + j0);
          cb1 = load(o.col_bias + j0 + L);
        }
        for (Index r = 0; r < rows; ++r) {
          const Index i = i0 + r;
          T* dst = o.out + i * o.ld + j0;
          const B rb(o.row_bias ? o.row_bias[i] : T(0));
          const B vi(p.tril ? T(i) : T(0));
          store(dst, xsimd::select((j_lo >= vi) & (j_lo < vlen), fmadd(load(tile + r * NR), vscale, cb0 + rb), vfill));
          store(dst + L,
                xsimd::select((j_hi >= vi) & (j_hi < vlen), fmadd(load(tile + r * NR + L), vscale, cb1 + rb), vfill));
        }
      } else {
        const Index j_end = std::min(j0 + NR, n);
        for (Index r = 0; r < rows; ++r) {
          const Index i = i0 + r;
          T* row = o.out + i * o.ld;
          const T rb = o.row_bias ? o.row_bias[i] : T(0);
          // madd, not std::fma: the same rounding as the vector tiles' xsimd::fma on every target (one rounding
          // only where the hardware fuses; on SSE2 std::fma would also be a slow software call).
          for (Index j = j0; j < j_end; ++j) {
            const bool keep = j < len && (!p.tril || j >= i);
            row[j] = keep ? madd(tile[r * NR + (j - j0)], p.scale, rb + (o.col_bias ? o.col_bias[j] : T(0)))
                          : p.fill;
          }
        }
      }
    }
  }
}

/// Calls emit(j, value) for every j in [j_begin, j_end) with row[j] > threshold. The vector compare skips
/// the (typically all-negative) bulk of a row without a branch per cell.
template <class T, class F>
inline void gp_scan_row(const T* row, Index j_begin, Index j_end, T threshold, F&& emit) {
  constexpr Index L = kLanes<T>;
  using B = Batch<T>;
  const B vt(threshold);
  Index j = j_begin;
  for (; j + L <= j_end; j += L) {
    if (xsimd::any(load(row + j) > vt)) {
      for (Index t = j; t < j + L; ++t)
        if (row[t] > threshold) emit(t, row[t]);
    }
  }
  for (; j < j_end; ++j)
    if (row[j] > threshold) emit(j, row[j]);
}

}  // namespace detail
}  // namespace kexue
