// SPDX-License-Identifier: MIT
#pragma once
// Row kernels of kexue/norm.hpp over Batch<T>: the reductions (sum, sum of squares, squared deviations, with
// the residual add fused into the first pass) and the apply pass y = (x - shift) * inv [* gamma] [+ beta].
// Each row is one pass over memory and then passes over the same row while it sits in L1/L2 (a 4096-float row
// is 16 KiB), so a norm costs one read and one write of each element of DRAM traffic.

#include <utility>

#include "kexue/detail/arch/ops.hpp"  // fmadd: one rounding wherever kFusedFma (xsimd 8.1's AVX-512 fma is two)
#include "kexue/detail/simd.hpp"

namespace kexue::detail {

/// Independent accumulators of the reductions: a vector add has 3-4 cycles of latency and two ports, so
/// four chains keep both busy (and four partial sums also shorten the float rounding chains by 4x).
constexpr Index kNormChains = 4;

/// sum_i x[i]^2.
template <class T>
inline T norm_sum_sq(const T* x, Index n) {
  constexpr Index L = kLanes<T>;
  Batch<T> s0(T(0)), s1(T(0)), s2(T(0)), s3(T(0));
  Index i = 0;
  for (; i + kNormChains * L <= n; i += kNormChains * L) {
    const Batch<T> a = load(x + i), b = load(x + i + L), c = load(x + i + 2 * L), d = load(x + i + 3 * L);
    s0 = fmadd(a, a, s0);
    s1 = fmadd(b, b, s1);
    s2 = fmadd(c, c, s2);
    s3 = fmadd(d, d, s3);
  }
  for (; i + L <= n; i += L) {
    const Batch<T> a = load(x + i);
    s0 = fmadd(a, a, s0);
  }
  T s = reduce_add<T>((s0 + s1) + (s2 + s3));
  for (; i < n; ++i) s = madd(x[i], x[i], s);
  return s;
}

/// {sum_i (x[i] - shift), sum_i (x[i] - shift)^2}: the shifted-data variance, var = sq / n - (sum / n)^2
/// (Chan, Golub & LeVeque). It loses about log2(1 + (mean - shift)^2 / var) bits to cancellation, none at all
/// for a shift near the mean; a large row mean costs nothing, since x[i] - shift is then exact (Sterbenz).
template <class T>
inline std::pair<T, T> norm_sum_dev(const T* x, T shift, Index n) {
  constexpr Index L = kLanes<T>;
  const Batch<T> vs(shift);
  Batch<T> s0(T(0)), s1(T(0)), q0(T(0)), q1(T(0));
  Index i = 0;
  // Two chains of each sum: four accumulators in flight, as in the other reductions.
  for (; i + 2 * L <= n; i += 2 * L) {
    const Batch<T> a = load(x + i) - vs, b = load(x + i + L) - vs;
    s0 += a;
    s1 += b;
    q0 = fmadd(a, a, q0);
    q1 = fmadd(b, b, q1);
  }
  for (; i + L <= n; i += L) {
    const Batch<T> a = load(x + i) - vs;
    s0 += a;
    q0 = fmadd(a, a, q0);
  }
  T s = reduce_add<T>(s0 + s1), q = reduce_add<T>(q0 + q1);
  for (; i < n; ++i) {
    const T a = x[i] - shift;
    s += a;
    q = madd(a, a, q);
  }
  return {s, q};
}

/// The first pass of a residual form: s[i] = x[i] + r[i], and with K = s[0] if shifted (else 0) returns
/// {K, sum_i (s[i] - K), sum_i (s[i] - K)^2}. s may be x or r itself (element i is read before it is written),
/// but no other overlap.
template <class T>
struct ShiftedSums {
  T shift, sum, squares;
};
template <class T>
inline ShiftedSums<T> norm_add_reduce(const T* x, const T* r, T* s, bool shifted, Index n) {
  constexpr Index L = kLanes<T>;
  const T shift = shifted && n > 0 ? x[0] + r[0] : T(0);
  const Batch<T> vk(shift);
  Batch<T> s0(T(0)), s1(T(0)), q0(T(0)), q1(T(0));
  Index i = 0;
  // Two chains of each sum: four accumulators in flight, as in the other reductions.
  for (; i + 2 * L <= n; i += 2 * L) {
    const Batch<T> u = load(x + i) + load(r + i), v = load(x + i + L) + load(r + i + L);
    store(s + i, u);
    store(s + i + L, v);
    const Batch<T> a = u - vk, b = v - vk;
    s0 += a;
    s1 += b;
    q0 = fmadd(a, a, q0);
    q1 = fmadd(b, b, q1);
  }
  for (; i + L <= n; i += L) {
    const Batch<T> u = load(x + i) + load(r + i);
    store(s + i, u);
    const Batch<T> a = u - vk;
    s0 += a;
    q0 = fmadd(a, a, q0);
  }
  T sum = reduce_add<T>(s0 + s1), sq = reduce_add<T>(q0 + q1);
  for (; i < n; ++i) {
    const T u = x[i] + r[i];
    s[i] = u;
    const T a = u - shift;
    sum += a;
    sq = madd(a, a, sq);
  }
  return {shift, sum, sq};
}

/// out[i] = ((x[i] - shift) - correction) * inv [* gamma[i]] [+ beta[i]]; out may be x itself. The mean is
/// subtracted in two parts (the rounded mean, then the small error norm_sum_dev measured): a mean rounded to T
/// alone would be off by up to half an ulp of the mean, a large error when the mean is large against the spread.
template <bool kGamma, bool kBeta, class T>
inline void norm_apply_impl(const T* x, T shift, T correction, T inv, const T* gamma, const T* beta, T* out,
                            Index n) {
  constexpr Index L = kLanes<T>;
  const Batch<T> vs(shift), vc(correction), vi(inv);
  auto lane = [&](Index i) {
    Batch<T> y = ((load(x + i) - vs) - vc) * vi;
    if constexpr (kGamma && kBeta) {
      y = fmadd(y, load(gamma + i), load(beta + i));
    } else if constexpr (kGamma) {
      y = y * load(gamma + i);
    } else if constexpr (kBeta) {
      y = y + load(beta + i);
    }
    store(out + i, y);
  };
  Index i = 0;
  // Two registers per step: the loop is bound by loads and stores, and the unroll halves its branch overhead.
  for (; i + 2 * L <= n; i += 2 * L) {
    lane(i);
    lane(i + L);
  }
  for (; i + L <= n; i += L) lane(i);
  for (; i < n; ++i) {
    T y = ((x[i] - shift) - correction) * inv;
    if constexpr (kGamma && kBeta) {
      y = madd(y, gamma[i], beta[i]);
    } else if constexpr (kGamma) {
      y = y * gamma[i];
    } else if constexpr (kBeta) {
      y = y + beta[i];
    }
    out[i] = y;
  }
}

/// norm_apply_impl with gamma / beta chosen at run time (nullptr: absent), outside the loop.
template <class T>
inline void norm_apply(const T* x, T shift, T correction, T inv, const T* gamma, const T* beta, T* out,
                       Index n) {
  if (gamma && beta) {
    norm_apply_impl<true, true>(x, shift, correction, inv, gamma, beta, out, n);
  } else if (gamma) {
    norm_apply_impl<true, false>(x, shift, correction, inv, gamma, beta, out, n);
  } else if (beta) {
    norm_apply_impl<false, true>(x, shift, correction, inv, gamma, beta, out, n);
  } else {
    norm_apply_impl<false, false>(x, shift, correction, inv, gamma, beta, out, n);
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
