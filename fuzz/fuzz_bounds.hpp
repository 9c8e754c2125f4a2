// SPDX-License-Identifier: MIT
#pragma once
// Error bounds of the differential fuzz targets that needed a derivation of their own, kept in one place so the
// unit suite checks its regression cases (past fuzz findings) against the very bound the target applies:
// tests/test_linear_attention.cpp and tests/test_global_pointer.cpp include this header.

#include <algorithm>
#include <cmath>
#include <limits>

#include "kexue/core.hpp"

namespace kexue_fuzz_bounds {

using kexue::Index;

/// phi of SPEC 5.2 in double (0 = elu + 1, 1 = relu, 2 = identity), as the reference computes it.
inline double la_feature(int map, double x) {
  if (map == 0) return x > 0 ? x + 1 : std::exp(x);
  if (map == 1) return x > 0 ? x : 0;
  return x;
}

/// Bound on |got - ref| for the outputs of one row i of linear attention computed in T (promised = false when T
/// promises no accuracy for that row: the caller then checks nothing there).
///   q_row(p), key(j, p): the inputs in double; keys j in [0, visible) are the ones row i sees; vmax = max |v|.
/// Model (u = eps(T), mu = smallest normal of T): every phi value carries a relative error of a few u and an
/// absolute one of up to mu (xsimd's exp flushes results below mu to 0 and kexue clamps its argument at -110
/// for float), and every product phi(q_p) phi(k_p) or s_j v_j that lands below mu keeps no relative precision
/// either. So the computed denominator den = sum_j s_j + eps, s_j = phi(q_i) . phi(k_j), is off by at most
///   c u (d + m) mass + U,  mass = sum_j sum_p |phi(q_p) phi(k_jp)|,  U = mu sum_j sum_p (|phi(q_p)| + |phi(k_jp)| + 1),
/// and each numerator by at most c u (d + m) mass vmax + U (vmax + 1); the ratio's forward error follows as
/// (|dnum| + |ref| |dden|) / |den| while |dden| < |den| / 2, which the promise below requires with a margin.
/// Fuzz finding 0102003b (float, elu + 1, eps = 0): the only key row 71 sees has phi(k) = exp(-122.25) =
/// 8e-54, below float's range: den is 1e-53 in double but exactly 0 in float, and the kernel's zero row for a
/// zero denominator (linear_attention.hpp) is all float can say. The earlier bound had no U term, so it promised
/// a float result for a denominator far below float's smallest normal.
struct LaRowBound {
  bool promised = false;  ///< false: T promises no accuracy for this row
  double u = 0, mu = 0, terms = 0, mass = 0, den = 0, under = 0, vmax = 0;
  /// The bound for an output of this row whose reference value is ref.
  double operator()(double ref) const {
    return 8 * u * terms * mass * (vmax + std::abs(ref)) / std::abs(den) +
           8 * under * (vmax + std::abs(ref) + 1) / std::abs(den) + 16 * u * std::abs(ref) + 1024 * mu;
  }
};

template <class T, class QRow, class Key>
LaRowBound la_row_bound(int map, double eps, Index d, Index m, Index visible, QRow&& q_row, Key&& key, double vmax) {
  LaRowBound b;
  b.u = double(std::numeric_limits<T>::epsilon());
  b.mu = double(std::numeric_limits<T>::min());
  b.terms = double(d + m + 16);
  b.vmax = vmax;
  b.den = eps;
  for (Index j = 0; j < visible; ++j)
    for (Index p = 0; p < d; ++p) {
      const double fq = la_feature(map, q_row(p)), fk = la_feature(map, key(j, p));
      b.mass += std::abs(fq * fk);
      b.den += fq * fk;
      b.under += std::abs(fq) + std::abs(fk) + 1;
    }
  b.under *= b.mu;
  const double tmax = double(std::numeric_limits<T>::max());
  // Finite promise: every partial sum fits in T and the denominator is well clear of both its rounding error and
  // its underflow error.
  b.promised = std::isfinite(b.mass) && b.mass * (vmax + 1) < 1e-3 * tmax && std::isfinite(b.under) &&
               std::abs(b.den) > 1e3 * (b.u * (b.mass + eps) + b.under);
  return b;
}

/// Magnitude of one GlobalPointer dot product RoPE_i(q) . RoPE_j(k) before scaling, for the error bound
/// 16 u (terms) (magnitude + |ref|): sum over the rotated pairs t of |(q_2t, q_2t+1)| |(k_2t, k_2t+1)| (2-norms),
/// given q(p) and k(p) for p in [0, d), d even.
/// Why pair norms and not sum_p |q_p| |k_p| of the unrotated inputs (the earlier bound): a rotation keeps each
/// pair's 2-norm, not its components, so the rotated components can be as large as the pair norm even where the
/// unrotated products are small, and the float rounding of the rotation (and of the table's cos, sin) is
/// relative to those rotated components. Fuzz finding 0100001001000010 (float, d = 2, cell (15, 15)):
/// q = (0.204, 119.96), k = (123.64, 0.0264), rotated by 15 rad to q' = (-78.2, -91.0), k' = (-93.9, 80.4):
/// q' . k' = 7343 - 7315 = 28.4 = q . k, so the old magnitude (28.4) was 500 times smaller than the terms the
/// kernel actually sums (r_q r_k = 14832), and a float result 1.3e-3 away (0.75 u r_q r_k, AVX2 and AVX-512
/// alike) was reported.
/// By Cauchy-Schwarz each pair's sum |q'_a k'_a| + |q'_b k'_b| <= r_q r_k, so this also bounds the componentwise
/// magnitude of the rotated product, at every position.
template <class QA, class KA>
double rotated_dot_magnitude(Index d, QA&& q, KA&& k) {
  double s = 0;
  for (Index t = 0; t + 1 < d; t += 2) s += std::hypot(q(t), q(t + 1)) * std::hypot(k(t), k(t + 1));
  if (d % 2) s += std::abs(q(d - 1)) * std::abs(k(d - 1));
  return s;
}

}  // namespace kexue_fuzz_bounds
