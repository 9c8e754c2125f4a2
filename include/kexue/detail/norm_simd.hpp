// SPDX-License-Identifier: MIT
#pragma once
// Row kernels of kexue/norm.hpp over Batch<T>: the reductions (sum, sum of squares, squared deviations, with
// the residual add fused into the first pass) and the apply pass y = (x - shift) * inv [* gamma] [+ beta].
// Each row is one pass over memory and then passes over the same row while it sits in L1/L2 (a 4096-float row
// is 16 KiB), so a norm costs one read and one write of each element of DRAM traffic; for outputs too large to
// stay in cache the apply pass stores non-temporally (store_stream), so the write is not preceded by a read.
//
// Storage S and compute type T: S is T itself (float, double), or Eigen::half / Eigen::bfloat16 with T = float.
// A 16-bit value is widened as it is loaded (load_as, exact) and every result is rounded once, as it is stored
// (store_as, to nearest even), so a 16-bit row gives the float kernel's result on the widened row, rounded.
// gamma and beta may be stored as T or as S (widened as loaded).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>

#include "kexue/detail/arch/ops.hpp"  // fmadd: one rounding wherever kFusedFma (xsimd 8.1's AVX-512 fma is two)
#include "kexue/detail/simd.hpp"

namespace kexue::detail {

/// The type the norms compute in for data stored as S: float for the 16-bit types, else S.
template <class S>
using NormCompute = std::conditional_t<kIs16Bit<S>, float, S>;

/// Independent accumulators of the reductions: a vector add has 3-4 cycles of latency and two ports, so
/// four chains keep both busy (and four partial sums also shorten the float rounding chains by 4x).
constexpr Index kNormChains = 4;

/// sum_i x[i]^2.
template <class T, class S>
inline T norm_sum_sq(const S* x, Index n) {
  constexpr Index L = kLanes<T>;
  Batch<T> s0(T(0)), s1(T(0)), s2(T(0)), s3(T(0));
  Index i = 0;
  for (; i + kNormChains * L <= n; i += kNormChains * L) {
    const Batch<T> a = load_as<T>(x + i), b = load_as<T>(x + i + L), c = load_as<T>(x + i + 2 * L),
                   d = load_as<T>(x + i + 3 * L);
    s0 = fmadd(a, a, s0);
    s1 = fmadd(b, b, s1);
    s2 = fmadd(c, c, s2);
    s3 = fmadd(d, d, s3);
  }
  for (; i + L <= n; i += L) {
    const Batch<T> a = load_as<T>(x + i);
    s0 = fmadd(a, a, s0);
  }
  T s = reduce_add<T>((s0 + s1) + (s2 + s3));
  for (; i < n; ++i) {
    const T a = as_compute<T>(x[i]);
    s = madd(a, a, s);
  }
  return s;
}

/// {sum_i (x[i] - shift), sum_i (x[i] - shift)^2}: the shifted-data variance, var = sq / n - (sum / n)^2
/// (Chan, Golub & LeVeque). It loses about log2(1 + (mean - shift)^2 / var) bits to cancellation, none at all
/// for a shift near the mean; a large row mean costs nothing, since x[i] - shift is then exact (Sterbenz).
template <class T, class S>
inline std::pair<T, T> norm_sum_dev(const S* x, T shift, Index n) {
  constexpr Index L = kLanes<T>;
  const Batch<T> vs(shift);
  Batch<T> s0(T(0)), s1(T(0)), q0(T(0)), q1(T(0));
  Index i = 0;
  // Two chains of each sum: four accumulators in flight, as in the other reductions.
  for (; i + 2 * L <= n; i += 2 * L) {
    const Batch<T> a = load_as<T>(x + i) - vs, b = load_as<T>(x + i + L) - vs;
    s0 += a;
    s1 += b;
    q0 = fmadd(a, a, q0);
    q1 = fmadd(b, b, q1);
  }
  for (; i + L <= n; i += L) {
    const Batch<T> a = load_as<T>(x + i) - vs;
    s0 += a;
    q0 = fmadd(a, a, q0);
  }
  T s = reduce_add<T>(s0 + s1), q = reduce_add<T>(q0 + q1);
  for (; i < n; ++i) {
    const T a = as_compute<T>(x[i]) - shift;
    s += a;
    q = madd(a, a, q);
  }
  return {s, q};
}

/// A row's first-pass sums: {K, sum_i (s[i] - K), sum_i (s[i] - K)^2} (K = 0 and only the squares for the RMS
/// forms).
template <class T>
struct ShiftedSums {
  T shift, sum, squares;
};

/// The first pass of a residual form: s[i] = x[i] + r[i] (rounded to S), and with K = s[0] if shifted (else 0)
/// returns {K, sum_i (s[i] - K), sum_i (s[i] - K)^2} over the values as stored: a 16-bit sum is rounded before
/// it is normalised, as PyTorch's layer_norm(x + residual) of 16-bit tensors reads the rounded sum. s may be x or
/// r itself (element i is read before it is written), but no other overlap.
template <class T, class S>
inline ShiftedSums<T> norm_add_reduce(const S* x, const S* r, S* s, bool shifted, Index n) {
  constexpr Index L = kLanes<T>;
  const T shift =
      shifted && n > 0 ? as_compute<T>(round_to<S>(as_compute<T>(x[0]) + as_compute<T>(r[0]))) : T(0);
  const Batch<T> vk(shift);
  // x + r as stored in s, as T: a 16-bit sum is read back (from the store buffer) to get its rounded value.
  const auto add = [&](Index i) {
    const Batch<T> u = load_as<T>(x + i) + load_as<T>(r + i);
    store_as(s + i, u);
    if constexpr (std::is_same<S, T>::value) {
      return u;
    } else {
      return load_as<T>(s + i);
    }
  };
  Batch<T> s0(T(0)), s1(T(0)), q0(T(0)), q1(T(0));
  Index i = 0;
  // Two chains of each sum: four accumulators in flight, as in the other reductions.
  for (; i + 2 * L <= n; i += 2 * L) {
    const Batch<T> a = add(i) - vk, b = add(i + L) - vk;
    s0 += a;
    s1 += b;
    q0 = fmadd(a, a, q0);
    q1 = fmadd(b, b, q1);
  }
  for (; i + L <= n; i += L) {
    const Batch<T> a = add(i) - vk;
    s0 += a;
    q0 = fmadd(a, a, q0);
  }
  T sum = reduce_add<T>(s0 + s1), sq = reduce_add<T>(q0 + q1);
  for (; i < n; ++i) {
    s[i] = round_to<S>(as_compute<T>(x[i]) + as_compute<T>(r[i]));
    const T a = as_compute<T>(s[i]) - shift;
    sum += a;
    sq = madd(a, a, sq);
  }
  return {shift, sum, sq};
}

/// The statistics of one row, as the apply pass uses them.
template <class T>
struct NormRowStats {
  T shift, correction, inv;
};

/// out[i] = ((x[i] - shift) - correction) * inv [* gamma[i]] [+ beta[i]], computed in T and rounded once to S;
/// out may be x itself. The mean is subtracted in two parts (the rounded mean, then the small error
/// norm_sum_dev measured): a mean rounded to T alone would be off by up to half an ulp of the mean, a large
/// error when the mean is large against the spread. Elementwise (the vector and the scalar forms round alike:
/// fmadd and madd), so any split of a row gives the same values. G, B: gamma's and beta's storage (T or S).
template <bool kGamma, bool kBeta, class T, class S, class G, class B>
struct NormApplier {
  const S* x;
  NormRowStats<T> st;
  const G* gamma;
  const B* beta;
  S* out;

  Batch<T> value(Index k, const Batch<T>& vs, const Batch<T>& vc, const Batch<T>& vi) const {
    Batch<T> y = ((load_as<T>(x + k) - vs) - vc) * vi;
    if constexpr (kGamma && kBeta) {
      y = fmadd(y, load_as<T>(gamma + k), load_as<T>(beta + k));
    } else if constexpr (kGamma) {
      y = y * load_as<T>(gamma + k);
    } else if constexpr (kBeta) {
      y = y + load_as<T>(beta + k);
    }
    return y;
  }

  void scalar(Index i, Index n) const {
    for (; i < n; ++i) {
      T y = ((as_compute<T>(x[i]) - st.shift) - st.correction) * st.inv;
      if constexpr (kGamma && kBeta) {
        y = madd(y, as_compute<T>(gamma[i]), as_compute<T>(beta[i]));
      } else if constexpr (kGamma) {
        y = y * as_compute<T>(gamma[i]);
      } else if constexpr (kBeta) {
        y = y + as_compute<T>(beta[i]);
      }
      out[i] = round_to<S>(y);
    }
  }

  /// Elements [0, n). kStream: whole registers at register-aligned addresses of out are stored non-temporally
  /// (store_stream), the unaligned head and the tail ordinarily; only for S == T.
  template <bool kStream>
  void range(Index n) const {
    constexpr Index L = kLanes<T>;
    const Batch<T> vs(st.shift), vc(st.correction), vi(st.inv);
    Index i = 0;
    if constexpr (kStream) {
      static_assert(std::is_same<S, T>::value, "kexue norms: streaming stores of T registers");
      constexpr std::uintptr_t kBytes = sizeof(T) * L;
      const std::uintptr_t misalign = reinterpret_cast<std::uintptr_t>(out) % kBytes;
      const std::uintptr_t head = misalign == 0 ? 0 : (kBytes - misalign);
      if (head % sizeof(T) == 0) {
        i = std::min<Index>(n, Index(head / sizeof(T)));
        scalar(0, i);
        // Two registers per step: the loop is bound by loads and stores, and the unroll halves its branch
        // overhead.
        for (; i + 2 * L <= n; i += 2 * L) {
          const Batch<T> y0 = value(i, vs, vc, vi), y1 = value(i + L, vs, vc, vi);
          store_stream(out + i, y0);
          store_stream(out + i + L, y1);
        }
        for (; i + L <= n; i += L) store_stream(out + i, value(i, vs, vc, vi));
        scalar(i, n);
        return;
      }
    }
    for (; i + 2 * L <= n; i += 2 * L) {
      const Batch<T> y0 = value(i, vs, vc, vi), y1 = value(i + L, vs, vc, vi);
      store_as(out + i, y0);
      store_as(out + i + L, y1);
    }
    for (; i + L <= n; i += L) store_as(out + i, value(i, vs, vc, vi));
    scalar(i, n);
  }
};

/// The apply pass of one row with gamma / beta chosen at run time (nullptr: absent), outside the loop.
template <bool kStream, class T, class S, class G, class B>
inline void norm_apply(const S* x, NormRowStats<T> st, const G* gamma, const B* beta, S* out, Index n) {
  if (gamma && beta) {
    NormApplier<true, true, T, S, G, B>{x, st, gamma, beta, out}.template range<kStream>(n);
  } else if (gamma) {
    NormApplier<true, false, T, S, G, B>{x, st, gamma, beta, out}.template range<kStream>(n);
  } else if (beta) {
    NormApplier<false, true, T, S, G, B>{x, st, gamma, beta, out}.template range<kStream>(n);
  } else {
    NormApplier<false, false, T, S, G, B>{x, st, gamma, beta, out}.template range<kStream>(n);
  }
}

/// 1 / sqrt(mean_square + eps), or 0 where mean_square + eps is 0 (bert4keras' divide_no_nan: a constant row
/// with eps = 0 becomes zeros rather than 0 / 0).
template <class T>
inline T norm_inverse_rms(T mean_square, T eps) {
  const T v = mean_square + eps;
  return v == T(0) ? T(0) : T(1) / std::sqrt(v);
}

}  // namespace kexue::detail
