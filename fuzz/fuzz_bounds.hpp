// SPDX-License-Identifier: MIT
#pragma once
// Error bounds of the differential fuzz targets that needed a derivation of their own, kept in one place so the
// unit suite checks its regression cases (past fuzz findings) against the very bound the target applies:
// tests/test_linear_attention.cpp, tests/test_global_pointer.cpp, tests/test_attention.cpp and tests/test_flash.cpp
// include this header.

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
/// The kernel computes phi(q_i) . S with the state S = phi(K)^T V held in T (float data keeps its products in
/// float even with double_state, which only accumulates chunks in double), so S must fit in T as well: row p of S
/// is at most sum_j |phi(k_jp)| vmax. Fuzz finding 2b2727ab (float, relu, non-causal, m = 1, double_state):
/// k_0 has a 1e30 at p = 5 and v_0 a 1e30 at column 12, so S(5, 12) = 1e60 is inf in float; phi(q_i) is 0 at
/// p = 5 (relu of -2.0), and 0 * inf = NaN where the double reference (which sums s_j v_j, s_j = 559) gives 1e30.
/// PyTorch's einsum form of the same state, phi(Q) (phi(K)^T V), returns that NaN too. No finite result would be
/// right in general (a saturated S makes a silently wrong finite value whenever phi(q_p) > 0), so the state's range
/// is part of the promise, and linear_attention.hpp documents it.
struct LaRowBound {
  bool promised = false;  ///< false: T promises no accuracy for this row
  double u = 0, mu = 0, terms = 0, mass = 0, den = 0, under = 0, vmax = 0;
  double state = 0;  ///< max_p sum_j |phi(k_jp)| over the visible keys
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
  for (Index p = 0; p < d; ++p) {
    const double fq = la_feature(map, q_row(p));
    double column = 0;  // sum_j |phi(k_jp)|: bounds row p of the state S = phi(K)^T V by column * vmax
    for (Index j = 0; j < visible; ++j) {
      const double fk = la_feature(map, key(j, p));
      b.mass += std::abs(fq * fk);
      b.den += fq * fk;
      b.under += std::abs(fq) + std::abs(fk) + 1;
      column += std::abs(fk);
    }
    b.state = std::max(b.state, column);
  }
  b.under *= b.mu;
  const double tmax = double(std::numeric_limits<T>::max());
  // Finite promise: every partial sum fits in T (the similarities s_j v_j and the state's phi(k_jp) v_j alike) and
  // the denominator is well clear of both its rounding error and its underflow error.
  b.promised = std::isfinite(b.mass) && b.mass * (vmax + 1) < 1e-3 * tmax && std::isfinite(b.state) &&
               b.state * (vmax + 1) < 1e-3 * tmax && std::isfinite(b.under) &&
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

/// fuzz_attention's bound (see fuzz/fuzz_attention.cpp's header comment): the largest scale * sum_c |q_ic k_jc| of
/// query row i over the keys (row-major q [n, d], k [m, d] in double), i.e. how large a logit can be and the error a
/// rounded dot product can make in it (in units of eps).
inline double attention_row_l1(const double* q, const double* k, Index i, Index m, Index d, double scale) {
  double l1 = 0;
  for (Index j = 0; j < m; ++j) {
    double s = 0;
    for (Index t = 0; t < d; ++t) s += std::abs(q[i * d + t] * k[j * d + t]);
    l1 = std::max(l1, s * std::abs(scale));
  }
  return l1;
}

/// fuzz_attention's bound on |got - ref| for every output of one row (T = float or double):
///   eps(T) max|v| (16 + 2 m + 2 (d + 2) c L1) + 1024 min(T)
/// with L1 = attention_row_l1 and c the SoftmaxPlus factor max(1, ln max(m, min_length) / ln train_length);
/// SquaredRelu (norm 2): 2 (d + 2) (L1 + 1)^2 m / L instead of the last term, L = relu2_length or 1.
/// A logit is a d-term dot product summed as one FMA chain and then scaled, so its rounding error is at most about
/// (d + 2) eps L1 (Higham's gamma_d for the chain, one more rounding for the scale); it was 2 eps L1 until fuzz
/// input 2f0000000000021a (SquaredRelu, m = 1, d = 14, L1 = 580) showed a logit off by 1.9 eps L1: relu^2 doubles
/// the relative error of a logit and its weight multiplies v directly, so that case needs the d-dependent term.
/// Softmax's weights are exp of logit differences: the same (d + 2) eps L1 logit error moves them by at most that
/// much relatively. norm: 0 Softmax, 1 SoftmaxPlus, 2 SquaredRelu (kexue::Normalization's order).
template <class T>
double attention_row_bound(int norm, double l1, Index m, Index d, double vmax, Index min_length, Index train_length,
                           Index relu2_length) {
  const double eps = double(std::numeric_limits<T>::epsilon());
  const double logit_err = double(d) + 2;  // in units of eps * L1
  double factor = 1;
  if (norm == 1)
    factor = std::max(1.0, std::log(double(std::max<Index>(m, min_length))) / std::log(double(train_length)));
  double growth = 2 * logit_err * factor * l1;
  if (norm == 2) {
    const double L = relu2_length > 0 ? double(relu2_length) : 1.0;
    growth = 2 * logit_err * (l1 + 1) * (l1 + 1) * double(m) / L;
  }
  return eps * vmax * (16 + 2 * double(m) + growth) + 1024 * double(std::numeric_limits<T>::min());
}

/// fuzz_flash's promise for row i of mixed_chunk_attention computed in T (flash.hpp: relu(scale qq.kq)^2 / quad_norm
/// weights on V inside the chunk, plus ql_i S / L with the linear state S = Kl^T V held in T).
///   mass = sum_j [(scale sum_p |qq_ip kq_jp|)^2 / quad_norm + sum_p |ql_ip kl_jp|] over all n keys;
///   state = max_p sum_j |kl_jp| over all n keys (row p of S is at most state * vmax; every key is counted, which
///   over-covers the keys a causal chunk or key_length leaves out: the promise is then only narrower).
///   dot = max_j sum_p |qq_ip kq_jp|: the kernel forms q.k in T before scaling it, so it must fit whatever the scale
///   (with scale = 0 the mass is 0, but an inf dot times 0 is NaN).
/// Finite promise: the inputs are finite and the row's terms (mass vmax), its dot products and the state
/// (state vmax) fit in T with a 1e3 margin. Accuracy (the target's earlier bound):
/// |got - ref| <= 16 u (s + sl + n + 16) (vmax mass + |ref|) + 1024 mu.
/// Fuzz finding 0081fb1e (float, n = 4, non-causal, one chunk): kl_02 = -1e30 and v_00 = 1e30, so S(2, 0) = -1e60 is
/// -inf in float; row 0 has ql_0 = 0 and kq = 0, so its mass is 0 and the earlier bound (terms only) promised a
/// finite row, but ql_0 S = 0 * -inf = NaN, where the double reference (which sums (ql_0 . kl_j) v_j = 0) gives 0.
/// It is the state range linear attention's finding 2b2727ab added to la_row_bound: the associative form
/// Ql (Kl^T V), which is what makes the term linear in n, holds a sum over keys that no query scales down.
struct FlashRowBound {
  bool promised = false;  ///< finite inputs whose terms and linear state fit in T: the output must be finite
  double u = 0, mu = 0, terms = 0, mass = 0, dot = 0, state = 0, vmax = 0;
  /// The bound for an output of this row whose reference value is ref.
  double operator()(double ref) const {
    return 16 * u * terms * (vmax * mass + std::abs(ref)) + 1024 * mu;
  }
};

/// qq(i, p), kq(j, p) for p < s; ql(i, p), kl(j, p) for p < sl; in double, finite says all five inputs are.
template <class T, class QQ, class KQ, class QL, class KL>
FlashRowBound flash_row_bound(Index i, Index n, Index s, Index sl, double scale, double quad_norm, double vmax,
                              bool finite, QQ&& qq, KQ&& kq, QL&& ql, KL&& kl) {
  FlashRowBound b;
  b.u = double(std::numeric_limits<T>::epsilon());
  b.mu = double(std::numeric_limits<T>::min());
  b.terms = double(s + sl + n + 16);
  b.vmax = vmax;
  for (Index j = 0; j < n; ++j) {
    double a = 0, l = 0;
    for (Index p = 0; p < s; ++p) a += std::abs(qq(i, p) * kq(j, p));
    for (Index p = 0; p < sl; ++p) l += std::abs(ql(i, p) * kl(j, p));
    b.mass += (scale * a) * (scale * a) / quad_norm + l;
    b.dot = std::max(b.dot, a);
  }
  for (Index p = 0; p < sl; ++p) {
    double column = 0;
    for (Index j = 0; j < n; ++j) column += std::abs(kl(j, p));
    b.state = std::max(b.state, column);
  }
  const double limit = 1e-3 * double(std::numeric_limits<T>::max());
  b.promised = finite && (b.mass + 1) * (vmax + 1) < limit && b.dot < limit && (b.state + 1) * (vmax + 1) < limit;
  return b;
}

}  // namespace kexue_fuzz_bounds
