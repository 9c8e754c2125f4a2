// SPDX-License-Identifier: MIT
#pragma once
// The SIMD helper file of the linear-attention family (the only file of the family that talks to xsimd):
// the feature maps over a row, and one register-blocked micro-kernel that every chunk product is made of.
//
// Every product of the chunked algorithms (S += phi(K)^T V, O = phi(Q) S, A = phi(Q) phi(K)^T, O += A V) is
// C[r][c] (+)= sum_p A(r, p) * B[p][c] with A read through two strides, so one kernel serves them all:
// A(r, p) = a[r * ars + p * aps] is broadcast from memory (a transposed operand costs nothing extra) and B is a
// row-major panel whose width is padded to a multiple of kNR by the caller.

#include <algorithm>
#include <cmath>

#include "kexue/detail/arch/ops.hpp"  // fmadd: one rounding wherever kFusedFma (xsimd 8.1's AVX-512 fma is two)
#include "kexue/detail/simd.hpp"

namespace kexue::detail {

/// Rows of one register tile. 6 rows x 2 registers = 12 accumulators: AVX2 has 16 ymm registers, and the two
/// B registers plus one broadcast need the other 3-4. 12 independent FMA chains cover the 2 ports x 4 cycles of
/// latency with room to spare, and per step the 12 FMAs need only 2 loads + 6 broadcasts (2 load ports).
constexpr Index kMR = 6;
/// Columns of one register tile, in lanes: two registers.
template <class T>
constexpr Index kNR = 2 * kLanes<T>;

/// Rounds n up to a multiple of the tile width.
template <class T>
constexpr Index pad_cols(Index n) {
  return (n + kNR<T> - 1) / kNR<T> * kNR<T>;
}

/// One MR x kNR tile: C[r][0..kNR) (+)= sum_{p < K} a[r*ars + p*aps] * b[p*ldb + 0..kNR).
template <class T, int MR>
inline void gemm_tile(Index K, const T* a, Index ars, Index aps, const T* b, Index ldb, T* c, Index ldc,
                      bool accumulate) {
  using B = Batch<T>;
  constexpr Index L = kLanes<T>;
  B acc0[MR], acc1[MR];
  for (int r = 0; r < MR; ++r) {
    if (accumulate) {
      acc0[r] = load(c + r * ldc);
      acc1[r] = load(c + r * ldc + L);
    } else {
      acc0[r] = B(T(0));
      acc1[r] = B(T(0));
    }
  }
  for (Index p = 0; p < K; ++p) {
    const B b0 = load(b + p * ldb), b1 = load(b + p * ldb + L);
    const T* ap = a + p * aps;
    for (int r = 0; r < MR; ++r) {
      const B ar(ap[r * ars]);
      acc0[r] = fmadd(ar, b0, acc0[r]);
      acc1[r] = fmadd(ar, b1, acc1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    store(c + r * ldc, acc0[r]);
    store(c + r * ldc + L, acc1[r]);
  }
}

/// Dispatches a tile of 1..kMR rows.
template <class T>
inline void gemm_tile_rows(Index rows, Index K, const T* a, Index ars, Index aps, const T* b, Index ldb, T* c,
                           Index ldc, bool accumulate) {
  switch (rows) {
    case 6:
      gemm_tile<T, 6>(K, a, ars, aps, b, ldb, c, ldc, accumulate);
      break;
    case 5:
      gemm_tile<T, 5>(K, a, ars, aps, b, ldb, c, ldc, accumulate);
      break;
    case 4:
      gemm_tile<T, 4>(K, a, ars, aps, b, ldb, c, ldc, accumulate);
      break;
    case 3:
      gemm_tile<T, 3>(K, a, ars, aps, b, ldb, c, ldc, accumulate);
      break;
    case 2:
      gemm_tile<T, 2>(K, a, ars, aps, b, ldb, c, ldc, accumulate);
      break;
    case 1:
      gemm_tile<T, 1>(K, a, ars, aps, b, ldb, c, ldc, accumulate);
      break;
    default:
      break;
  }
}

/// C[M x N] (+)= A(M x K) * B[K x N]; N must be a multiple of kNR<T> (the caller pads B and C). With K = 0 and
/// accumulate = false, C is zeroed.
template <class T>
inline void gemm(Index M, Index N, Index K, const T* a, Index ars, Index aps, const T* b, Index ldb, T* c, Index ldc,
                 bool accumulate) {
  // Column panels outside: one K x kNR panel of B (at most a few KB) stays in L1 while every row tile uses it.
  for (Index c0 = 0; c0 < N; c0 += kNR<T>) {
    for (Index r0 = 0; r0 < M; r0 += kMR) {
      gemm_tile_rows(std::min(kMR, M - r0), K, a + r0 * ars, ars, aps, b + c0, ldb, c + r0 * ldc + c0, ldc, accumulate);
    }
  }
}

/// Lower-triangular scores of one causal chunk: C[r][c] = sum_p A(r, p) B[p][c] for the column panels that
/// reach c <= r + diag (the rest of C is not written). Cuts the intra-chunk QK^T work roughly in half.
template <class T>
inline void gemm_lower(Index M, Index K, Index diag, const T* a, Index ars, Index aps, const T* b, Index ldb, T* c,
                       Index ldc) {
  for (Index r0 = 0; r0 < M; r0 += kMR) {
    const Index rows = std::min(kMR, M - r0);
    const Index last_col = r0 + rows - 1 + diag;  // the last column any row of this tile can see
    for (Index c0 = 0; c0 <= last_col; c0 += kNR<T>)
      gemm_tile_rows(rows, K, a + r0 * ars, ars, aps, b + c0, ldb, c + r0 * ldc + c0, ldc, false);
  }
}

/// C[M x N] += A[M x K] B[K x N] where row r of A is zero past column r + diag: the reduction of each row tile
/// stops at the tile's last visible column. Inside the tile's diagonal block a row's reduction would still run over
/// the columns past its own diagonal, adding 0 * B; that is 0 only for finite B. With b_finite false (some row of B
/// may hold inf or NaN) each row of that block stops at its own diagonal instead, so a row never touches a B row it
/// cannot see. The order of the remaining terms is unchanged, so for finite B both ways give the same bits.
template <class T>
inline void gemm_lower_a(Index M, Index N, Index K, Index diag, const T* a, Index lda, const T* b, Index ldb, T* c,
                         Index ldc, bool b_finite = true) {
  for (Index c0 = 0; c0 < N; c0 += kNR<T>) {
    for (Index r0 = 0; r0 < M; r0 += kMR) {
      const Index rows = std::min(kMR, M - r0);
      const Index kk = std::min(K, r0 + rows + diag);
      if (kk <= 0) continue;
      if (b_finite) {
        gemm_tile_rows(rows, kk, a + r0 * lda, lda, Index(1), b + c0, ldb, c + r0 * ldc + c0, ldc, true);
        continue;
      }
      const Index shared = std::max<Index>(0, std::min(K, r0 + 1 + diag));  // columns every row of the tile sees
      if (shared > 0)
        gemm_tile_rows(rows, shared, a + r0 * lda, lda, Index(1), b + c0, ldb, c + r0 * ldc + c0, ldc, true);
      for (Index r = 0; r < rows; ++r) {
        const Index own = std::min(K, r0 + r + 1 + diag);
        if (own > shared)
          gemm_tile<T, 1>(own - shared, a + (r0 + r) * lda + shared, lda, Index(1), b + shared * ldb + c0, ldb,
                          c + (r0 + r) * ldc + c0, ldc, true);
      }
    }
  }
}

/// True when rows x cols values (row stride ld) hold no inf and no NaN: x - x is 0 for finite x, NaN otherwise.
template <class T>
inline bool rows_finite(const T* x, Index rows, Index cols, Index ld) {
  constexpr Index L = kLanes<T>;
  Batch<T> acc(T(0));
  T tail = T(0);
  for (Index i = 0; i < rows; ++i) {
    const T* row = x + i * ld;
    Index j = 0;
    for (; j + L <= cols; j += L) {
      const Batch<T> v = load(row + j);
      acc += v - v;
    }
    for (; j < cols; ++j) tail += row[j] - row[j];
  }
  const T s = reduce_add<T>(acc) + tail;
  return s == s;
}

/// The feature maps of SPEC 5.2 (kept in step with kexue::FeatureMap).
enum class Phi { EluPlusOne, Relu, Identity };

template <class T>
inline T phi_scalar(Phi f, T x) {
  switch (f) {
    case Phi::EluPlusOne:
      return x > T(0) ? x + T(1) : x == x ? std::exp(x) : T(0);  // a NaN x gives 0, as in phi_batch
    case Phi::Relu:
      return T(0) < x ? x : T(0);  // a NaN x gives 0, as in phi_batch
    default:
      return x;
  }
}

template <Phi F, class T>
inline Batch<T> phi_batch(const Batch<T>& x) {
  if constexpr (F == Phi::EluPlusOne) {
    // elu(x) + 1 = x + 1 for x > 0, exp(x) otherwise. exp_nonpositive clamps its argument to [underflow, 0]:
    // huge x never overflows, and -inf / -1e30 never reach xsimd 8.1's undefined integer conversion (fuzz finding).
    return xsimd::select(x > Batch<T>(T(0)), x + Batch<T>(T(1)), exp_nonpositive(x));
  } else if constexpr (F == Phi::Relu) {
    return at_least<T>(x, Batch<T>(T(0)));  // a NaN x gives 0 on every ISA
  } else {
    return x;
  }
}

// x may be stored as S = Eigen::half / Eigen::bfloat16 (16-bit q, k): each vector is widened as it is loaded,
// so phi of a 16-bit row is phi of the widened row, bit for bit (arch/ops.hpp's load_as; S == T is a plain load).
template <Phi F, class T, class S>
inline void phi_row_impl(const S* x, T* y, Index n) {
  constexpr Index L = kLanes<T>;
  Index i = 0;
  for (; i + L <= n; i += L) store(y + i, phi_batch<F, T>(load_as<T>(x + i)));
  for (; i < n; ++i) y[i] = phi_scalar(F, as_compute<T>(x[i]));
}

/// y[i] = phi(x[i]) for one row.
template <class T, class S>
inline void phi_row(Phi f, const S* x, T* y, Index n) {
  switch (f) {
    case Phi::EluPlusOne:
      phi_row_impl<Phi::EluPlusOne>(x, y, n);
      break;
    case Phi::Relu:
      phi_row_impl<Phi::Relu>(x, y, n);
      break;
    default:
      phi_row_impl<Phi::Identity>(x, y, n);
      break;
  }
}

/// Column j of the transposed buffer yt[p * ldy + j] = phi(x[p]): the keys of a chunk laid out as the B panel
/// of the score product. The map runs in registers; the transpose is a strided scalar store.
template <class T, class S>
inline void phi_row_to_column(Phi f, const S* x, T* yt, Index ldy, Index n) {
  constexpr Index L = kLanes<T>;
  alignas(64) T tmp[kLanes<T>];
  Index p = 0;
  for (; p + L <= n; p += L) {
    Batch<T> y;
    switch (f) {
      case Phi::EluPlusOne:
        y = phi_batch<Phi::EluPlusOne, T>(load_as<T>(x + p));
        break;
      case Phi::Relu:
        y = phi_batch<Phi::Relu, T>(load_as<T>(x + p));
        break;
      default:
        y = load_as<T>(x + p);
        break;
    }
    y.store_aligned(tmp);
    for (Index l = 0; l < L; ++l) yt[(p + l) * ldy] = tmp[l];
  }
  for (; p < n; ++p) yt[p * ldy] = phi_scalar(f, as_compute<T>(x[p]));
}

/// x[i] = relu(s * x[i])^2 * w for i < n: the squared-ReLU weights of FLASH's quadratic part (SPEC 3.5).
template <class T>
inline void relu2_row(T* x, T s, T w, Index n) {
  constexpr Index L = kLanes<T>;
  const Batch<T> vs(s), vw(w), zero(T(0));
  Index i = 0;
  for (; i + L <= n; i += L) {
    const Batch<T> r = at_least<T>(load(x + i) * vs, zero);
    store(x + i, r * r * vw);
  }
  for (; i < n; ++i) {
    const T a = x[i] * s, r = T(0) < a ? a : T(0);  // a NaN logit gives 0, as in the vector lanes
    x[i] = r * r * w;
  }
}

}  // namespace kexue::detail
